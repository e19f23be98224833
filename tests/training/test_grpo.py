"""GRPO: advantages and every loss variant against numpy; KL 0 and ratio 1 at step 0; teacher-forced
log-probabilities equal the sampler's; rewards of parsed rollouts equal the rubric functions; a golden step."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from omnirrm_jax.decoding.sampler import SamplingConfig, generate
from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.rubric import rewards as R
from omnirrm_jax.training import grpo_loss, grpo_objective, lora, optim, rollout
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.training.grpo_config import GRPOSpec
from omnirrm_jax.training.state import create_train_state


# ---------------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------------

def np_advantages(r, scale):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for b in range(r.shape[0]):
        g = r[b]
        a = g - g.mean()
        if scale == "group":
            a = a / (np.std(g, ddof=1) + 1e-4)
        out[b] = a
    return out


def np_loss(logp, old, ref, adv, mask, valid, beta, eps, eps_high, est, loss_type, N):
    R_, T = logp.shape
    total, rows, toks = 0.0, [], 0
    per = np.zeros_like(logp)
    for i in range(R_):
        for t in range(T):
            if not (mask[i, t] and valid[i]):
                continue
            ratio = np.exp(logp[i, t] - old[i, t])
            c = min(max(ratio, 1 - eps), 1 + eps_high)
            l = -min(ratio * adv[i], c * adv[i])
            if beta:
                d = ref[i, t] - logp[i, t]
                l += beta * ((np.exp(d) - d - 1) if est == "k3" else (logp[i, t] - ref[i, t]))
            per[i, t] = l
    n_valid = max(valid.sum(), 1)
    if loss_type == "grpo":
        for i in range(R_):
            if valid[i]:
                m = (mask[i] * valid[i]).sum()
                total += per[i].sum() / max(m, 1)
        return total / n_valid
    if loss_type == "dr_grpo":
        return per.sum() / (n_valid * N)
    return per.sum() / max((mask * valid[:, None]).sum(), 1)


def test_group_advantages_equal_numpy():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 4))
    r[2] = 0.7  # a constant group: zero advantage, no division blow-up
    for scale in ("group", "none"):
        got = grpo_loss.group_advantages(r, scale)
        np.testing.assert_allclose(got, np_advantages(r, scale), rtol=1e-5, atol=1e-6)
    got = grpo_loss.group_advantages(r, "group", valid_B=np.array([1, 1, 1, 0, 1], bool))
    assert (got[3] == 0).all() and (got[2] == 0).all()
    with pytest.raises(ValueError, match="advantage scale"):
        grpo_loss.group_advantages(r, "batch")


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("est,beta", [("k3", 0.04), ("k1", 0.1), ("k3", 0.0)])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_loss_variants_equal_numpy(loss_type, est, beta, eps_high):
    rng = np.random.default_rng(1)
    R_, T = 6, 7
    logp = rng.normal(-2, 0.5, (R_, T))
    old = logp + rng.normal(0, 0.3, (R_, T))  # ratios well outside the clip range too
    ref = logp + rng.normal(0, 0.2, (R_, T))
    adv = rng.normal(size=R_)
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, R_)[:, None]).astype(np.int32)
    valid = np.array([1, 1, 1, 1, 0, 1], np.int32)
    got, m = grpo_loss.grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                 jnp.asarray(ref, jnp.float32), jnp.asarray(adv, jnp.float32), jnp.asarray(mask),
                                 jnp.asarray(valid), beta=beta, epsilon=0.2, epsilon_high=eps_high,
                                 kl_estimator=est, loss_type=loss_type, max_completion_length=T)
    want = np_loss(logp, old, ref, adv, mask, valid, beta, 0.2, 0.2 if eps_high is None else eps_high, est,
                   loss_type, T)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)
    assert 0.0 < float(m["clip_frac"]) < 1.0


# ---------------------------------------------------------------------------------------------------
# model-level
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    cfg = C.tiny(dtype="float32", param_dtype="float32")

    def model_fn():
        m = Thinker(cfg, rngs=nnx.Rngs(0))
        lora.apply_lora(m, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
        return m

    rng = np.random.default_rng(0)
    B, Sq = 2, 20
    ids = rng.integers(1, 400, (B, Sq))
    mask = np.ones((B, Sq), np.int32)
    mask[1, :6] = 0
    inputs = prepare_inputs(cfg, ids, mask)
    return cfg, model_fn, inputs


def _sampled(model, inputs, G=3, N=6, greedy=False):
    sampling = SamplingConfig(max_new_tokens=N, num_samples=G, greedy=greedy, stop_token_ids=(7,), top_k=20)
    return generate(model, inputs, sampling, jax.random.key(3)), sampling


@pytest.mark.parametrize("N", [6, 5])  # an odd completion length takes the padded completion pass
def test_teacher_forced_logprobs_equal_greedy_sampler(tiny, N):
    cfg, model_fn, inputs = tiny
    model = model_fn()
    res, _ = _sampled(model, inputs, G=2, N=N, greedy=True)
    B, G, N = res.tokens.shape
    mask = (np.arange(N)[None, None] < np.asarray(res.lengths)[..., None]).reshape(B * G, N)
    lp = grpo_objective.completion_logprobs(model, inputs, jnp.asarray(res.tokens).reshape(B * G, N), jnp.asarray(mask), G)
    want = np.asarray(res.logprobs).reshape(B * G, N)
    np.testing.assert_allclose(np.where(mask, np.asarray(lp), 0), want, atol=2e-5)
    # row chunks (rematerialised) and small logit windows give the same values and gradients
    toks, m = jnp.asarray(res.tokens).reshape(B * G, N), jnp.asarray(mask)
    chunked = grpo_objective.completion_logprobs(model, inputs, toks, m, G, rows_per_chunk=2, logit_tokens=4)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(lp), atol=1e-5)
    graphdef, params = nnx.split(model)

    def total(p, **kw):
        mdl = nnx.merge(graphdef, p)
        return jnp.sum(jnp.where(m, grpo_objective.completion_logprobs(mdl, inputs, toks, m, G, **kw), 0.0))

    g1 = jax.grad(total)(params)
    g2 = jax.grad(lambda p: total(p, rows_per_chunk=2))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["audio_in_video", "separate_streams"])
def test_teacher_forced_logprobs_on_media_prompts(tmp_path, which):
    """Image + audio, video with its own interleaved audio (TMRoPE audio-in-video), video + images of two sizes:
    the prompt-once-then-completions pass continues each row's mRoPE positions exactly as the sampler did."""
    from omnirrm_jax.models import params as P
    from tests.hf_tiny import saved_tiny_thinker
    from tests.models import test_thinker as T

    model, cfg = P.load_hf(saved_tiny_thinker(str(tmp_path), seed=5))
    make = {"audio_in_video": T.batch_audio_in_video, "separate_streams": T.batch_separate_streams}[which]
    inputs = prepare_inputs(cfg, **make(np.random.default_rng(0), cfg))
    G, N = 2, 7
    res = generate(model, inputs, SamplingConfig(max_new_tokens=N, num_samples=G, greedy=True), jax.random.key(0))
    B = res.tokens.shape[0]
    toks = jnp.asarray(res.tokens).reshape(B * G, N)
    lp = grpo_objective.completion_logprobs(model, inputs, toks, jnp.ones_like(toks, bool), G)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(res.logprobs).reshape(B * G, N), atol=5e-5)


def _roll_and_state(tiny, mesh, beta=0.04, mu=1, scores=None, accum=1):
    cfg, model_fn, inputs = tiny
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.0,
                                                grad_accum_steps=accum), 10)
    state, shardings = create_train_state(model_fn, tx, mesh, full_finetune=False)
    spec = GRPOSpec(num_generations=3, max_completion_length=6, beta=beta, num_iterations=mu)
    res, _ = _sampled(state.model(), inputs, G=3, N=6)
    B, G, N = res.tokens.shape
    rewards = np.arange(B * G, dtype=np.float64).reshape(B, G) % 4 if scores is None else scores
    scored = {"advantages": grpo_loss.group_advantages(rewards, "group"), "valid": np.ones(B, bool)}
    roll = rollout.build_roll(res.tokens, res.lengths, scored, mesh)
    return state, shardings, tx, spec, roll


def test_step0_kl_zero_ratio_one_and_golden_step(tiny):
    cfg, model_fn, inputs = tiny
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, shardings, tx, spec, roll = _roll_and_state(tiny, mesh)
    ref_fn = grpo_objective.jit_logprobs(state.graphdef, spec, base=True)
    roll["ref_logp"] = ref_fn(state.trainable, state.frozen, inputs, roll)
    step_fn = grpo_objective.jit_grpo_step(state, tx, spec, shardings)
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    trainable, opt_state, step, m = step_fn(jax.tree.map(jnp.copy, state.trainable), state.frozen,
                                            state.opt_state, state.step, inputs, roll)
    assert float(m["kl"]) == 0.0 and float(m["ratio_mean"]) == 1.0 and float(m["clip_frac"]) == 0.0
    assert bool(m["finite"]) and int(step) == 1
    # the step changes LoRA factors only
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(state.trainable)))
    # golden: at ratio 1 and KL 0 the grpo loss is -mean_rows(A) = 0 for centred groups
    assert abs(float(m["loss"])) < 1e-6
    assert float(m["grad_norm"]) > 0.0


def test_reference_pass_is_the_base_model_whatever_the_lora_factors(tiny):
    """The reference program leaves the LoRA branches out: with B moved away from zero it gives the log-probs of the
    same weights with B zeroed (the base policy), not the policy's, and its program holds fewer matmuls."""
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, _, _, spec, roll = _roll_and_state(tiny, mesh)
    _, _, inputs = tiny
    bumped = nnx.map_state(lambda path, x: x + 0.05 if path[-1] == "lora_b" else x, state.trainable)
    base_fn = grpo_objective.jit_logprobs(state.graphdef, spec, base=True)
    policy_fn = grpo_objective.jit_logprobs(state.graphdef, spec)
    ref = np.asarray(base_fn(bumped, state.frozen, inputs, roll))
    np.testing.assert_allclose(ref, np.asarray(policy_fn(lora.without_lora(bumped), state.frozen, inputs, roll)),
                               atol=1e-5)
    assert np.abs(ref - np.asarray(policy_fn(bumped, state.frozen, inputs, roll))).max() > 1e-3

    def dots(fn):
        return fn.lower(bumped, state.frozen, inputs, roll).as_text().count("dot_general")
    assert dots(base_fn) < dots(policy_fn)


def test_second_iteration_uses_old_logprobs(tiny):
    """num_iterations = 2: the second update's ratio moves away from 1 (importance sampling)."""
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, shardings, tx, spec, roll = _roll_and_state(tiny, mesh, beta=0.0, mu=2)
    _, _, inputs = tiny
    roll["old_logp"] = grpo_objective.jit_logprobs(state.graphdef, spec)(state.trainable, state.frozen, inputs, roll)
    step_fn = grpo_objective.jit_grpo_step(state, tx, spec, shardings)
    t, o, s, m1 = step_fn(jax.tree.map(jnp.copy, state.trainable), state.frozen, state.opt_state, state.step,
                          inputs, roll)
    _, _, _, m2 = step_fn(t, state.frozen, o, s, inputs, roll)
    assert abs(float(m1["ratio_mean"]) - 1.0) < 1e-6
    assert abs(float(m2["ratio_mean"]) - 1.0) > 1e-6


def test_update_count_moves_at_accumulation_boundaries(tiny):
    """train/lr is read at the optimizer's update count; the step count (micro-steps) ran k times ahead of it under
    accumulation, so the logged rate was a later update's."""
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, shardings, tx, spec, roll = _roll_and_state(tiny, mesh, beta=0.0, accum=2)
    step_fn = grpo_objective.jit_grpo_step(state, tx, spec, shardings)
    t, o, s, counts = jax.tree.map(jnp.copy, state.trainable), state.opt_state, state.step, []
    for _ in range(4):
        t, o, s, m = step_fn(t, state.frozen, o, s, tiny[2], roll)
        counts.append(int(m["updates"]))
    assert counts == [0, 1, 1, 2] and int(s) == 4


def _perturbed(trainable, seed):
    """LoRA B factors start at zero (so A gets no gradient): random values make every factor's gradient count."""
    leaves, treedef = jax.tree.flatten(trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _sgd_delta(graphdef, spec, trainable, frozen, inputs, roll):
    """The update a learning-rate-1 SGD step makes (= minus the gradient) and the step's metrics."""
    tx = optax.sgd(1.0)
    new, _, _, m = grpo_objective.grpo_step(graphdef, tx, spec, trainable, frozen, tx.init(trainable), jnp.int32(0),
                                  inputs, roll)
    return jax.tree.map(lambda a, b: np.asarray(a - b), new, trainable), m


def _assert_chunked_equals_whole(graphdef, spec, trainable, frozen, inputs, roll, rows_per_chunk):
    whole, m1 = _sgd_delta(graphdef, spec, trainable, frozen, inputs, roll)
    chunked, m2 = _sgd_delta(graphdef, dataclasses.replace(spec, rows_per_chunk=rows_per_chunk), trainable, frozen,
                             inputs, roll)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(whole)) > 0
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(whole) + jax.tree.leaves(chunked))
    assert np.isfinite(float(m1["grad_norm"])) and np.isfinite(float(m2["grad_norm"]))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(b, a, atol=2e-6, rtol=2e-4)
    for key in ("loss", "kl", "ratio_mean", "clip_frac", "grad_norm"):
        np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("loss_type,old,beta,full", [("grpo", False, 0.04, False), ("dr_grpo", True, 0.0, False),
                                                      ("dapo", True, 0.04, True)])
def test_chunked_update_accumulates_the_whole_batch_gradient(loss_type, old, beta, full):
    """rows_per_chunk: each prompt chunk's forward and backward run back to back and the gradients add up; the
    update equals the one taken on the whole batch at once, for every loss normalisation, with and without the
    old policy's log-probs and the KL term, LoRA and full fine-tuning (the embedding table gets gradient from the
    prompts through the pulled-back embedding gradient and from the completions inside the chunks). Four prompts
    in two chunks of two (chunk 0 holds prompts 0 and 2: a strided split), one left-padded, one all padding."""
    cfg = C.tiny(dtype="float32", param_dtype="float32")
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    if not full:
        lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    rng = np.random.default_rng(0)
    B, G, N, Sq = 4, 2, 5, 12
    ids = rng.integers(1, 400, (B, Sq))
    mask = np.ones((B, Sq), np.int32)
    mask[1, :4] = 0
    ids[2], mask[2] = 0, 0  # a final partial batch's padding prompt
    inputs = prepare_inputs(cfg, ids, mask)
    graphdef, trainable, frozen = nnx.split(model, nnx.Param if full else nnx.LoRAParam, ...)
    trainable = _perturbed(trainable, 1)
    lengths = rng.integers(1, N + 1, B * G)
    roll = {"completions": jnp.asarray(rng.integers(1, 400, (B * G, N)), jnp.int32),
            "completion_mask": jnp.asarray(np.arange(N)[None] < lengths[:, None], jnp.int32),
            "advantages": jnp.asarray(rng.normal(size=B * G), jnp.float32),
            "row_valid": jnp.asarray(np.repeat([1, 1, 0, 1], G), jnp.int32)}
    spec = GRPOSpec(num_generations=G, max_completion_length=N, beta=beta, loss_type=loss_type)
    logp = grpo_objective.jit_logprobs(graphdef, spec)(trainable, frozen, inputs, roll)
    if beta:
        roll["ref_logp"] = logp + 0.1 * jnp.asarray(rng.normal(size=logp.shape), jnp.float32)
    if old:  # an old policy away from the current one: ratios move off 1 and some clip
        roll["old_logp"] = logp + 0.3 * jnp.asarray(rng.normal(size=logp.shape), jnp.float32)
    _assert_chunked_equals_whole(graphdef, spec, trainable, frozen, inputs, roll, 2 * G)


def test_masked_nan_logprobs_leave_the_gradient_finite():
    """A padding row's log-probs may be NaN; they must not reach the gradient through exp()."""
    logp = jnp.array([[-1.0, -2.0], [jnp.nan, jnp.nan]])
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        g = jax.grad(lambda lp: grpo_loss.grpo_loss(
            lp, jax.lax.stop_gradient(lp), lp + 0.1, jnp.array([1.0, 0.0]), jnp.ones((2, 2)), jnp.array([1, 0]),
            beta=0.04, epsilon=0.2, loss_type=loss_type)[0])(logp)
        assert np.isfinite(np.asarray(g)).all(), loss_type
        assert np.abs(np.asarray(g[0])).max() > 0


@pytest.mark.slow
def test_chunked_update_on_media_prompts(tmp_path):
    """With images, video and audio the towers run once and the chunks' embedding gradients reach the vision
    merger's and the audio projector's LoRA factors: the same update as the whole batch."""
    from omnirrm_jax.models import params as P
    from tests.hf_tiny import saved_tiny_thinker
    from tests.models import test_thinker as T

    model, cfg = P.load_hf(saved_tiny_thinker(str(tmp_path), seed=5))
    lora.apply_lora(model, lora.LoraConfig(rank=2, alpha=4), nnx.Rngs(1))
    inputs = prepare_inputs(cfg, **T.batch_audio_in_video(np.random.default_rng(0), cfg))
    G, N = 2, 5
    res = generate(model, inputs, SamplingConfig(max_new_tokens=N, num_samples=G, greedy=False), jax.random.key(0))
    B = res.tokens.shape[0]
    scored = {"advantages": grpo_loss.group_advantages(np.arange(B * G, dtype=float).reshape(B, G) % 3, "group"),
              "valid": np.ones(B, bool)}
    roll = rollout.build_roll(res.tokens, res.lengths, scored, S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1]))
    graphdef, trainable, frozen = nnx.split(model, nnx.LoRAParam, ...)
    trainable = _perturbed(trainable, 3)
    names = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]}
    assert any("merger" in n for n in names) and any("audio" in n for n in names)
    spec = GRPOSpec(num_generations=G, max_completion_length=N, beta=0.0)
    _assert_chunked_equals_whole(graphdef, spec, trainable, frozen, inputs, roll, G)


def test_rollout_rewards_equal_rubric_functions():
    class Tok:
        special_ids = {"im_end": 99, "pad": 0}

        def decode(self, ids, skip_special_tokens=False):
            return TEXTS[ids[0]]

    good = ('{"score_A": 8, "score_B": 3, "better": "A", "reasoning": "<think>fluency: A clearer than B; relevance '
            'A vs B; accuracy A better; reasoning A better; safety both safe</think>", '
            '"final_verdict": "<answer>[[A]]</answer>"}')
    TEXTS = [good, "not json", good.replace('"better": "A"', '"better": "B"'), '```json\n' + good + '\n```']
    tokens = np.array([[[0, 99], [1, 99]], [[2, 99], [3, 99]]])
    lengths = np.full((2, 2), 2)
    host = {"gold_better": np.array([0, 1]), "gold_score_A": np.array([9, 2]), "gold_score_B": np.array([2, 8]),
            "valid": np.array([True, True])}
    spec = GRPOSpec()
    scored = rollout.score_rollout(Tok(), tokens, lengths, host, spec)
    want = R.reward_components(TEXTS, better=["A", "A", "B", "B"], score_A=[9, 9, 2, 2], score_B=[2, 2, 8, 8])
    for k in ("format", "content", "rubric", "total"):
        np.testing.assert_allclose(scored[k].reshape(-1), want[k], rtol=0, atol=1e-12)
    # the third text says B while its scores favour A: inconsistent, so it does not parse as a verdict
    assert scored["parsed"].tolist() == [[True, False], [False, True]]
    assert scored["correct"].tolist() == [[True, False], [False, False]]
    np.testing.assert_allclose(scored["advantages"], grpo_loss.group_advantages(scored["total"], "group"))
