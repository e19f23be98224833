"""Chunked token log-probs equal the direct computation; schedules and LoRA wiring behave."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

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
    loss, n = losses.masked_cross_entropy(h, ids, mask, lambda x: x @ W, chunk=4)
    logp = jax.nn.log_softmax(h @ W, -1)[:, :-1]
    picked = np.take_along_axis(np.asarray(logp), np.asarray(ids)[:, 1:, None], -1)[..., 0]
    m = np.asarray(mask)[:, 1:]
    np.testing.assert_allclose(float(loss), -(picked * m).sum() / m.sum(), rtol=1e-5)
    assert int(n) == m.sum()


def test_schedule_warmup_then_cosine_to_zero():
    sched = optim.learning_rate_schedule(optim.OptimConfig(learning_rate=1e-3, warmup_ratio=0.1), 100)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1e-3) < 1e-9
    assert float(sched(55)) < 1e-3 and float(sched(100)) < 1e-9


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
