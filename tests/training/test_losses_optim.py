"""Chunked token log-probs equal the direct computation; schedules and LoRA wiring behave."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from omnirrm_jax.models import head
from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.training import lora, losses, optim


def test_chunked_cross_entropy_equals_direct():
    rng = np.random.default_rng(0)
    B, T, D, V = 2, 13, 8, 50
    h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, V, (B, T)))
    mask = jnp.asarray(rng.integers(0, 2, (B, T)))
    loss, n = losses.masked_cross_entropy(h, ids, mask, logits_fn=lambda x: x @ W, chunk=4)
    logp = jax.nn.log_softmax(h @ W, -1)[:, :-1]
    picked = np.take_along_axis(np.asarray(logp), np.asarray(ids)[:, 1:, None], -1)[..., 0]
    m = np.asarray(mask)[:, 1:]
    np.testing.assert_allclose(float(loss), -(picked * m).sum() / m.sum(), rtol=1e-5)
    assert int(n) == m.sum()


def test_loss_window_scores_the_last_targets_only():
    """With every target inside the window the loss, the count and the gradients equal the whole-row loss; targets
    before the window are not scored."""
    rng = np.random.default_rng(3)
    B, T, D, V, K = 2, 13, 8, 50, 5
    h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, V, (B, T)))
    tail = np.zeros((B, T), np.int32)
    tail[0, T - 3:], tail[1, T - K:] = 1, 1  # judgements of 3 and K tokens at the ends of left-padded rows

    def loss(h, W, mask, window):
        return losses.masked_cross_entropy(h, ids, jnp.asarray(mask), logits_fn=lambda x: x @ W, chunk=4,
                                           window=window)
    for window in (K, K + 2, T - 1, None):
        (got, n), g_got = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, W, tail, window)
        (want, n0), g_want = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, W, tail, None)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
        assert int(n) == int(n0) == 3 + K
        for a, b in zip(g_got, g_want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    inside = tail * (np.arange(T) >= T - 3)
    np.testing.assert_allclose(float(loss(h, W, tail, 3)[0]), float(loss(h, W, inside, None)[0]), rtol=1e-6)
    assert int(loss(h, W, tail, 3)[1]) == 6


def _logprob_grads(fn, h, W, g):
    return jax.value_and_grad(lambda h, W: jnp.sum(g * fn(h, W)), (0, 1))(h, W)


def test_fused_head_logprobs_equal_chunked_with_gradients():
    """The fused head (gradient w.r.t. the hidden state computed in the forward pass) gives the same log-probs
    and the same gradients for the hidden states and the head as the checkpointed chunks, with a temperature."""
    rng = np.random.default_rng(1)
    B, T, D, V = 2, 13, 8, 50
    h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    y = jnp.asarray(rng.integers(0, V, (B, T)))
    g = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
    for temperature in (1.0, 0.7):
        want = _logprob_grads(lambda h, W: head.token_logprobs(h, y, lambda x: (x @ W) / temperature, chunk=4),
                              h, W, g)
        got = _logprob_grads(lambda h, W: head.linear_token_logprobs(h, y, W, chunk=4, temperature=temperature),
                             h, W, g)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_fused_head_ignores_non_finite_positions_outside_the_loss():
    """A padding row whose hidden state is NaN reaches neither gradient when the loss does not use it: the hidden
    states' is zero there, the head's equals the gradient without that row."""
    rng = np.random.default_rng(2)
    h = jnp.asarray(rng.normal(size=(1, 6, 4)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 9, (1, 6)))
    keep = jnp.arange(6)[None] < 4

    def loss(h, W):
        return jnp.sum(jnp.where(keep, head.linear_token_logprobs(h, y, W, chunk=4), 0.0))
    dh, dW = jax.grad(loss, (0, 1))(h.at[0, 4:].set(jnp.nan), W)
    assert not np.asarray(dh[0, :4] == 0).all()
    np.testing.assert_array_equal(np.asarray(dh[0, 4:]), 0.0)
    np.testing.assert_allclose(np.asarray(dW), np.asarray(jax.grad(loss, 1)(h, W)), rtol=1e-6, atol=1e-7)


def test_frozen_head_gradient_is_not_computed():
    """Differentiating only the hidden states drops the head's own gradient (a second pass over the logits)."""
    h, W = jnp.zeros((1, 256, 32)), jnp.zeros((32, 512))
    y = jnp.zeros((1, 256), jnp.int32)

    def flops(argnums):
        fn = jax.grad(lambda h, W: jnp.sum(head.linear_token_logprobs(h, y, W, chunk=64)), argnums)
        return jax.jit(fn).lower(h, W).compile().cost_analysis()["flops"]
    assert flops((0,)) < 0.6 * flops((0, 1))


def _direct_logprobs(logits, y):
    return np.take_along_axis(np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1)), np.asarray(y)[..., None],
                              -1)[..., 0]


def test_model_head_is_fused_only_when_it_is_one_matrix():
    """Untied and tied heads are one matrix (the fused path); a head with a LoRA branch falls back to
    `model.logits`, LoRA included. Each gives the log-probs computed directly from `model.logits`."""
    h = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, C.tiny().text.hidden_size)), jnp.float32)
    y = jnp.asarray([[1, 2, 3, 4, 5]])
    for tied in (False, True):
        cfg = C.tiny()
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tie_word_embeddings=tied))
        model = Thinker(cfg, rngs=nnx.Rngs(0))
        assert (model.lm_head is None) == tied
        np.testing.assert_allclose(np.asarray(h @ model.output_weight()), np.asarray(model.logits(h)), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(head.head_token_logprobs(h, y, model, chunk=2)),
                                   _direct_logprobs(model.logits(h), y), rtol=1e-5, atol=1e-6)
    model = Thinker(C.tiny(), rngs=nnx.Rngs(0))
    assert lora.apply_lora(model, lora.LoraConfig(targets=r"^lm_head$"), nnx.Rngs(1)) == ["lm_head"]
    before = np.asarray(model.logits(h))
    model.lm_head.lora_b[...] = jnp.ones_like(model.lm_head.lora_b[...])  # the branch now changes the logits
    assert np.abs(np.asarray(model.logits(h)) - before).max() > 1e-3
    assert model.output_weight() is None
    np.testing.assert_allclose(np.asarray(head.head_token_logprobs(h, y, model, chunk=2)),
                               _direct_logprobs(model.logits(h), y), rtol=1e-5, atol=1e-6)


def test_schedule_warmup_then_cosine_to_zero():
    sched = optim.learning_rate_schedule(optim.OptimConfig(learning_rate=1e-3, warmup_ratio=0.1), 100)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1e-3) < 1e-9
    assert float(sched(55)) < 1e-3 and float(sched(100)) < 1e-9


@pytest.mark.parametrize("updates, ratio, warmup", [(10, 0.05, 1), (50, 0.05, 3), (150, 0.03, 5)])
def test_warmup_length_is_hf_ceil(updates, ratio, warmup):
    """HF TrainingArguments.get_warmup_steps takes ceil(ratio * total); round() gave 0, 2, 4 (banker's rounding)."""
    cfg = optim.OptimConfig(learning_rate=1.0, warmup_ratio=ratio, schedule="constant")
    sched = optim.learning_rate_schedule(cfg, updates)
    rates = [float(sched(u)) for u in range(warmup + 1)]
    assert rates[warmup] == 1.0 and all(r < 1.0 for r in rates[:warmup]), rates


def test_lora_starts_at_base_and_without_lora_is_base():
    cfg = C.tiny()
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    inputs = prepare_inputs(cfg, np.arange(1, 17).reshape(2, 8))
    base = np.asarray(model.forward(inputs))
    targets = lora.apply_lora(model, lora.LoraConfig(), nnx.Rngs(1))
    assert "model.layers.0.self_attn.q_proj" in targets and not any(t.startswith("visual.blocks") for t in targets)
    np.testing.assert_array_equal(np.asarray(model.forward(inputs)), base)
    # train-like perturbation of B changes the output; zeroing B restores the base exactly
    graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)
    bumped = nnx.map_state(lambda p, x: x + 0.1 if p[-1] == "lora_b" else x, lora_state)
    assert np.abs(np.asarray(nnx.merge(graphdef, bumped, rest).forward(inputs)) - base).max() > 1e-3
    np.testing.assert_array_equal(
        np.asarray(nnx.merge(graphdef, lora.without_lora(bumped), rest).forward(inputs)), base)
