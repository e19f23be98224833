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


# recorded with the code of branch h-tests off main fe1c54f (jax 0.10.2, flax 0.12.8, CPU, fp32 highest)
GRPO_GOLDEN = \
{'cycle0': {'advantages': [[-0.7453159689903259, -0.3908364176750183, 1.1361525058746338],
                           [-0.7930930852890015, -0.3299509584903717, 1.1230440139770508]],
            'completion_length': 7.166666666666667,
            'completions': [[456, 144, 259, 171, 498, 308, 263, 414],
                            [438, 427, 340, 67, 349, 235, 170, 13],
                            [498, 438],
                            [176, 230, 508, 229, 258, 241, 86, 376],
                            [385, 144, 438, 352, 272, 41, 371, 320],
                            [57, 351, 346, 97, 185, 236, 291, 371]],
            'grad_norm': [3.2225217819213867, 1.0131527185440063],
            'kl': [0.0, 1.5114281177520752],
            'loss': [1.4901161193847656e-07, -0.035026997327804565],
            'ratio_mean': [1.0, 1.468940258026123],
            'reward_content_mean': -0.25333333333333335,
            'reward_format_mean': 0.9500000000000001,
            'reward_rubric_mean': 0.88,
            'reward_total_mean': 0.4546666666666668,
            'reward_total_std': 0.3595602252134621,
            'rewards': [[0.116, 0.272, 0.944], [0.116, 0.32, 0.96]],
            'sampler_logprob_mean': -3.7888858318328857,
            'verdict_accuracy': 0.3333333333333333},
 'cycle1': {'advantages': [[0.6452776789665222, 0.5063838362693787, -1.1516615152359009],
                           [0.11900559812784195, -1.0540496110916138, 0.93504399061203]],
            'completion_length': 7.0,
            'completions': [[498],
                            [364, 428, 396, 259, 169, 320, 80],
                            [97, 425, 80, 151, 249, 438, 400, 371],
                            [132, 232, 291, 438, 28, 355, 199, 353],
                            [97, 231, 336, 262, 235, 216, 101, 262],
                            [366, 395, 213, 508, 94, 503, 236, 477]],
            'grad_norm': [2.3398518562316895, 1.2018576860427856],
            'kl': [0.24387896060943604, 0.7290493845939636],
            'loss': [0.009853065013885498, -0.06519023329019547],
            'ratio_mean': [1.0, 0.9351218342781067],
            'reward_content_mean': 1.850371707708594e-17,
            'reward_format_mean': 0.8083333333333332,
            'reward_rubric_mean': 0.5666666666666668,
            'reward_total_mean': 0.43666666666666676,
            'reward_total_std': 0.5655270894385953,
            'rewards': [[0.944, 0.88, 0.116], [0.32, -0.6, 0.96]],
            'sampler_logprob_mean': -3.6988766193389893,
            'verdict_accuracy': 0.5},
 'lora': {'audio/lora_a': [-0.420460062159691, 23.15103974932572, -0.8907483616494574],
          'audio/lora_b': [0.16084999276790768, 8.252852462988812, -0.401991929509677],
          'merger/lora_a': [-4.068131704414554, 92.07031200697384, -3.1489981151316897],
          'merger/lora_b': [0.090224990302886, 27.46583250932781, -0.23769016150436073],
          'text/lora_a': [8.75680651491166, 474.45709219318996, 7.935627770277279],
          'text/lora_b': [-3.221426182700725, 150.26341501628985, -0.6360934679446473]}}
