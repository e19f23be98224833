"""Golden metrics after real optimizer updates: the SFT step and the GRPO rollout -> rewards -> update cycle on a
tiny fp32 thinker with media prompts, fixed seeds, one CPU device.

What they pin: the SFT loss before and after each of two AdamW updates (so a step that updates nothing, or
updates differently, fails), the gradient norms, and checksums of the updated LoRA factors per module group; for
GRPO, the sampled completion tokens (exactly), the rubric rewards and group advantages, the loss, KL, ratio and
gradient norm of every update and the updated factors' checksums, over two rollout cycles (the second samples from
the updated policy).

When updating the goldens is legitimate: only when a change is *meant* to change the numbers (model init, LoRA init
or targets, the loss, optimizer or reward definitions, the sampler's use of the random key) -- say why in the
commit. A refactor of the trainers, model I/O or decoding must leave them as they are. To re-record, run
`OMNIRRM_RECORD_GOLDEN=1 pytest -s tests/training/test_golden.py` and paste the printed dicts.
"""
from __future__ import annotations

import os
import pprint

import jax
import numpy as np

from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import prepare_inputs
from omnirrm_jax.rubric import rewards as R
from omnirrm_jax.training import grpo, grpo_loss, optim, sft
from omnirrm_jax.training import config as run_config
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.training.grpo_config import GRPOSpec
from omnirrm_jax.training.state import create_run_state
from tests.models import test_thinker as T

RECORD = os.environ.get("OMNIRRM_RECORD_GOLDEN") == "1"
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------

def _group(path: tuple) -> str:
    """A LoRA leaf's checksum group: the tower it sits in and which factor it is."""
    names = [str(p) for p in path]
    joined = ".".join(names)
    tower = ("audio" if "audio" in joined else "merger" if "merger" in joined else
             "vision" if "visual" in joined or "vision" in joined else "text")
    factor = "lora_a" if "lora_a" in joined else "lora_b" if "lora_b" in joined else names[-1]
    return f"{tower}/{factor}"


def lora_checksums(trainable) -> dict:
    """{group: [sum, sum of |x|, sum of x * a fixed +-1 pattern]} over the trainable (LoRA) leaves. The signed
    pattern catches changes that keep the sum and the abs-sum (a swapped or transposed factor)."""
    out: dict[str, list[float]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]:
        x = np.asarray(leaf, np.float64).reshape(-1)
        sign = np.where(np.arange(x.size) % 3 == 1, -1.0, 1.0)
        acc = out.setdefault(_group(tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)), [0.0, 0.0, 0.0])
        acc[0] += float(x.sum())
        acc[1] += float(np.abs(x).sum())
        acc[2] += float((x * sign).sum())
    return dict(sorted(out.items()))


def _compare(got, want, where: str, msg: str) -> None:
    """Recursively: the same keys and lengths, integers (tokens, counts) equal, floats within RTOL/ATOL."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}\n{msg}"
        for k in want:
            _compare(got[k], want[k], f"{where}[{k!r}]", msg)
    elif isinstance(want, (list, tuple)) and "/lora_" in where:  # a checksum triple (`lora_checksums`)
        # the sum and the signed sum cancel: their float noise scales with the sum of |x|, not with themselves
        # (a sum of 1.04 over |x| summing to 92 moved 1.5e-5 between package releases)
        assert isinstance(got, (list, tuple)) and len(got) == 3, f"{where}: {got} != {want}\n{msg}"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL + RTOL * abs(float(want[1])), err_msg=f"{where}\n{msg}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{where}: {got} != {want}\n{msg}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]", msg)
    elif isinstance(want, (bool, int)):
        assert got == want, f"{where}: {got} != {want} (exact)\n{msg}"
    else:
        np.testing.assert_allclose(float(got), float(want), rtol=RTOL, atol=ATOL, err_msg=f"{where}\n{msg}")


def _assert_golden(name: str, got: dict, want: dict) -> None:
    if RECORD:
        print(f"\n{name} = \\\n{pprint.pformat(got, width=120, sort_dicts=True)}")
        return
    msg = f"{name} moved (see the module docstring for when re-recording is legitimate); measured:\n" \
          f"{pprint.pformat(got, width=120, sort_dicts=True)}"
    _compare(got, want, name, msg)


def _one_device_mesh():
    return S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])


def _media_prompts(cfg):
    """Two left-padded prompts mixing text, an image, audio and a video with its own audio (TMRoPE
    audio-in-video): every tower and its adapter is on the path."""
    return T.batch_audio_in_video(np.random.default_rng(0), cfg)


def _run_state(tx, seed=0):
    """The state `omnirrm sft` / `omnirrm grpo` start from: a tiny preset, the default LoRA (r=8, alpha=32, all
    linear layers of the LLM and the multimodal adapters)."""
    cfg = C.tiny(dtype="float32", param_dtype="float32")
    spec = run_config.ModelSpec(preset="tiny", dtype="float32", param_dtype="float32")
    mesh = _one_device_mesh()
    state, shardings = create_run_state(spec, cfg, tx, mesh, seed)
    return cfg, mesh, state, shardings


# ---------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------

def test_sft_golden_after_two_updates():
    """Three micro-steps of the jitted SFT step (AdamW with cosine decay, weight decay and clipping, as a
    run builds it): the loss before any update and after one and two updates, the gradient norms, and the LoRA
    factors after the three updates."""
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1), 10)
    cfg, mesh, state, shardings = _run_state(tx)
    batch = prepare_inputs(cfg, **_media_prompts(cfg))
    ids = np.asarray(batch["input_ids"])
    # targets: every text token (media placeholders and padding excluded)
    loss_mask = ((ids < 500) & (np.asarray(batch["attention_mask"]) == 1)).astype(np.int32)
    batch["loss_mask"] = loss_mask
    batch["example_index"] = np.arange(ids.shape[0])
    step_fn = sft.jit_sft_step(state, tx, shardings)
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    losses, grad_norms = [], []
    for _ in range(3):
        trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, batch)
        assert bool(m["finite"])
        losses.append(float(m["loss"]))
        grad_norms.append(float(m["grad_norm"]))
    assert int(step) == 3
    # the updates really happen: the loss moves between steps and falls (the same batch every step)
    assert abs(losses[1] - losses[0]) > 1e-3 and losses[2] < losses[0], losses
    got = {"loss": losses, "grad_norm": grad_norms, "target_tokens": int(loss_mask[:, 1:].sum()),
           "lora": lora_checksums(trainable)}
    assert abs(got["lora"]["text/lora_b"][1]) > 0 and {"audio/lora_b", "merger/lora_b"} <= set(got["lora"])
    _assert_golden("SFT_GOLDEN", got, SFT_GOLDEN)


# recorded with the code of branch h-tests off main fe1c54f (jax 0.10.2, flax 0.12.8, CPU, fp32 highest)
SFT_GOLDEN = \
{'grad_norm': [6.019063472747803, 3.7427587509155273, 3.432246208190918],
 'lora': {'audio/lora_a': [-0.3813889642478898, 23.170920442673378, -0.8343659749953076],
          'audio/lora_b': [0.10680068005603971, 9.057119238823361, -0.12306970555073349],
          'merger/lora_a': [-6.238843377388093, 91.77598573669138, -3.6534136816621867],
          'merger/lora_b': [1.0530171238169714, 26.01065576165638, 0.5707042636240658],
          'text/lora_a': [7.618637241061151, 487.9776320095971, 6.107869477213171],
          'text/lora_b': [0.1472617405792107, 155.22840858047186, 1.0874865457984697]},
 'loss': [6.3771185874938965, 4.441320419311523, 3.0836358070373535],
 'target_tokens': 13}


# ---------------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------------

GOOD = ('{"score_A": 8, "score_B": 3, "better": "A", "reasoning": "<think>fluency: A clearer than B; relevance A vs '
        'B; accuracy A better; reasoning A better; safety both safe</think>", "final_verdict": "<answer>[[A]]</answer>"}')
JUDGEMENTS = (
    GOOD,                                                                      # right, complete
    GOOD.replace('"score_A": 8, "score_B": 3', '"score_A": 6, "score_B": 5'),  # right, closer scores
    GOOD.replace('"better": "A"', '"better": "B"'),                            # self-inconsistent
    GOOD.replace('[[A]]', '[[B]]').replace('"A"', '"B"').replace('8, "score_B": 3', '2, "score_B": 9'),  # wrong
    '```json\n' + GOOD.replace("; safety both safe", "") + '\n```',            # fenced, a rubric item short
    "not json at all",
)


class ToyTokenizer:
    """A completion decodes to one of `JUDGEMENTS`, picked by its token ids: a random tiny policy then gets rewards
    that differ within a group, so advantages, the policy loss and its gradient are not zero."""

    special_ids = {"im_end": 7, "pad": 0}

    def __init__(self):
        self.seen: list[list[int]] = []  # every decoded completion (stop token and padding removed), in order

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(t) for t in ids]
        self.seen.append(ids)
        return judgement_of(ids)


def judgement_of(ids: list[int]) -> str:
    return JUDGEMENTS[sum((i + 1) * t for i, t in enumerate(ids)) % len(JUDGEMENTS)]


def test_grpo_golden_two_rollout_cycles():
    """Two `RolloutUpdate` cycles (what `omnirrm grpo` runs per rollout batch: sample G completions, score them with
    the reference rubric rewards, the KL reference forward, the old-policy forward, and num_iterations = 2 updates),
    the second cycle sampling from the updated policy."""
    spec = GRPOSpec(num_generations=3, max_completion_length=8, beta=0.04, num_iterations=2, epsilon=0.2)
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1), 10)
    cfg, mesh, state, shardings = _run_state(tx)
    batch = dict(prepare_inputs(cfg, **_media_prompts(cfg)))
    batch.update(gold_better=np.array([0, 1]), gold_score_A=np.array([9, 2]), gold_score_B=np.array([2, 8]),
                 valid=np.array([True, True]))
    tok = ToyTokenizer()
    cycle = grpo.RolloutUpdate.build(state, tx, spec, shardings, tok=tok, mesh=mesh)
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    got: dict = {}
    for i in range(2):
        tok.seen.clear()
        trainable, opt_state, step, record, updates = cycle(trainable, opt_state, step, batch,
                                                            jax.random.fold_in(jax.random.key(0), i))
        assert all(bool(m["finite"]) for m in updates)
        got[f"cycle{i}"] = {
            "reward_total_mean": record["reward/total_mean"], "reward_format_mean": record["reward/format_mean"],
            "reward_content_mean": record["reward/content_mean"], "reward_rubric_mean": record["reward/rubric_mean"],
            "reward_total_std": record["reward/total_std"], "verdict_accuracy": record["rollout/verdict_accuracy"],
            "completion_length": record["rollout/completion_length"],
            "sampler_logprob_mean": record["rollout/sampler_logprob_mean"],
            "loss": [float(m["loss"]) for m in updates], "kl": [float(m["kl"]) for m in updates],
            "ratio_mean": [float(m["ratio_mean"]) for m in updates],
            "grad_norm": [float(m["grad_norm"]) for m in updates]}
        # the completions the rewards saw, and their rewards and advantages by the public rubric functions
        assert len(tok.seen) == 2 * spec.num_generations
        texts = [judgement_of(ids) for ids in tok.seen]
        comps = R.reward_components(texts, better=["A"] * 3 + ["B"] * 3, score_A=[9] * 3 + [2] * 3,
                                    score_B=[2] * 3 + [8] * 3)
        total = np.asarray(comps["total"]).reshape(2, spec.num_generations)
        np.testing.assert_allclose(total.mean(), record["reward/total_mean"], rtol=1e-12, atol=1e-12)
        got[f"cycle{i}"].update(completions=[list(ids) for ids in tok.seen],
                                rewards=total.round(12).tolist(),
                                advantages=grpo_loss.group_advantages(total, "group").round(9).tolist())
    assert int(step) == 4
    got["lora"] = lora_checksums(trainable)
    c0, c1 = got["cycle0"], got["cycle1"]
    # the cycle really updates: KL 0 and ratio 1 only on the very first update, then both move
    assert c0["kl"][0] == 0.0 and c0["kl"][1] > 0 and abs(c0["ratio_mean"][1] - 1) > 1e-7 and c1["kl"][0] > 0
    assert c0["reward_total_std"] > 0 and c0["grad_norm"][0] > 0
    _assert_golden("GRPO_GOLDEN", got, GRPO_GOLDEN)


# re-recorded when rollouts with top-k began to draw among the top-k candidates (decoding.top_k_draw: the
# same distribution, another use of the random key); jax 0.10.2, flax 0.12.8, CPU, fp32 highest
GRPO_GOLDEN = \
{'cycle0': {'advantages': [[-1.1542582511901855, 0.5771291255950928, 0.5771291255950928],
                           [1.1230440139770508, -0.7930930852890015, -0.3299509584903717]],
            'completion_length': 8.0,
            'completions': [[325, 286, 259, 308, 396, 260, 34, 451],
                            [373, 259, 65, 40, 334, 53, 438, 347],
                            [176, 71, 308, 5, 340, 212, 136, 457],
                            [428, 396, 477, 373, 412, 232, 28, 333],
                            [377, 346, 206, 86, 233, 396, 438, 230],
                            [409, 112, 352, 328, 221, 395, 332, 262]],
            'grad_norm': [2.684976100921631, 2.0657732486724854],
            'kl': [0.0, 4.44769811630249],
            'loss': [-6.658956408500671e-08, 0.07844645529985428],
            'ratio_mean': [1.0, 1.1812502145767212],
            'reward_content_mean': 0.026666666666666672,
            'reward_format_mean': 0.9500000000000001,
            'reward_rubric_mean': 0.2533333333333334,
            'reward_total_mean': 0.4413333333333334,
            'reward_total_std': 0.2965100710300111,
            'rewards': [[0.116, 0.568, 0.568], [0.96, 0.116, 0.32]],
            'sampler_logprob_mean': -3.726139783859253,
            'verdict_accuracy': 0.5},
 'cycle1': {'advantages': [[0.0, 0.0, 0.0], [1.1541688442230225, -0.5770844221115112, -0.5770844221115112]],
            'completion_length': 8.0,
            'completions': [[261, 460, 187, 315, 176, 187, 64, 354],
                            [457, 456, 139, 187, 477, 171, 159, 25],
                            [65, 308, 308, 324, 75, 65, 40, 171],
                            [340, 460, 395, 473, 477, 259, 212, 373],
                            [34, 184, 395, 139, 259, 139, 352],
                            [143, 416, 373, 460, 267, 485, 333]],
            'grad_norm': [1.3201475143432617, 0.6261771321296692],
            'kl': [0.21947431564331055, 0.5058389902114868],
            'loss': [0.00877892505377531, -0.046499207615852356],
            'ratio_mean': [1.0000001192092896, 0.9368728995323181],
            'reward_content_mean': 0.13999999999999999,
            'reward_format_mean': 1.0,
            'reward_rubric_mean': -0.6866666666666666,
            'reward_total_mean': 0.31866666666666665,
            'reward_total_std': 0.27906192064765045,
            'rewards': [[0.568, 0.568, 0.568], [0.32, -0.056, -0.056]],
            'sampler_logprob_mean': -3.6436469554901123,
            'verdict_accuracy': 0.5},
 'lora': {'audio/lora_a': [-0.3406211597903166, 23.01935605300241, -0.9268779096018989],
          'audio/lora_b': [-0.3876588356524735, 8.836263094008245, -0.5255166250590264],
          'merger/lora_a': [1.0422963064629585, 92.10332231072243, -0.40805937742698006],
          'merger/lora_b': [-0.5860203911638564, 26.878616977026013, 0.056333768044623866],
          'text/lora_a': [6.977255339319527, 470.4937588620014, 7.328572046571935],
          'text/lora_b': [0.8622512653182639, 148.51973994882792, 4.458670422651267]}}
