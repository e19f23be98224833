"""Decoder-layer rematerialisation: the same loss and gradients with and without it, and really applied."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.training import lora, sft


def _batch(cfg, B=2, T=20):
    rng = np.random.default_rng(0)
    mask = np.ones((B, T), np.int32)
    mask[1, :4] = 0
    batch = prepare_inputs(cfg, rng.integers(1, 400, (B, T)), mask)
    batch["loss_mask"] = (np.arange(T)[None] >= T // 2).astype(np.int32).repeat(B, 0)
    return batch


def _loss_and_grads(remat: str, full: bool, scan_layers: bool = False):
    cfg = dataclasses.replace(C.tiny(), remat=remat, scan_layers=scan_layers)
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    if not full:
        lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
        # B starts at zero; give it values so the LoRA path shapes the gradients too
        for layer in lora.linear_paths(model).values():
            if layer.lora_b is not None:
                layer.lora_b[...] = 0.01 * jax.random.normal(jax.random.key(2), layer.lora_b.shape)
    graphdef, trainable, frozen = nnx.split(model, nnx.Param if full else nnx.LoRAParam, ...)
    batch = _batch(cfg)
    fn = jax.jit(jax.value_and_grad(lambda t: sft.loss_fn(t, frozen, graphdef, batch)[0]))
    loss, grads = fn(trainable)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda t: sft.loss_fn(t, frozen, graphdef, batch)[0]))(trainable))
    return float(loss), grads, jaxpr


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_remat_policies_give_the_same_loss_and_grads(full):
    base_loss, base_grads, base_jaxpr = _loss_and_grads("none", full)
    n_base = base_jaxpr.count("remat")  # the chunked loss is rematerialised already
    for policy in ("full", "dots"):
        loss, grads, jaxpr = _loss_and_grads(policy, full)
        # the switch is real: one rematerialised region per decoder layer in the traced gradient
        assert jaxpr.count("remat") == n_base + C.tiny().text.num_layers, policy
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6, err_msg=policy)
        flat, flat_base = jax.tree.leaves(grads), jax.tree.leaves(base_grads)
        assert len(flat) == len(flat_base)
        for g, g0 in zip(flat, flat_base):
            # recomputation may fuse and round differently: fp32 noise, far below any real gradient change
            scale = float(np.abs(np.asarray(g0)).max())
            np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-4, atol=1e-5 * scale, err_msg=policy)


def test_model_spec_remat_values():
    assert config_lib.load_config(None, ["model.remat=true"]).model.remat == "full"
    assert config_lib.load_config(None, ["model.remat=false"]).model.remat == "none"
    assert config_lib.load_config(None, ["model.remat=dots"]).model.remat == "dots"
    with pytest.raises(config_lib.ConfigError, match="model.remat.*none, full, dots"):
        config_lib.load_config(None, ["model.remat=everything"])
    with pytest.raises(ValueError, match="remat 'some'"):
        C.tiny(remat="some")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_give_the_loops_loss_and_grads(remat):
    """`scan_layers` (one traced layer under `lax.scan`) against the Python loop: same loss and LoRA gradients, and
    the loop really has one remat region per layer where the scan has one."""
    loss, grads, jaxpr = _loss_and_grads(remat, full=False, scan_layers=True)
    loss0, grads0, jaxpr0 = _loss_and_grads(remat, full=False, scan_layers=False)
    assert jaxpr.count("dot_general") < jaxpr0.count("dot_general")  # the scan traced one layer, the loop two
    if remat != "none":
        assert jaxpr0.count("remat") - jaxpr.count("remat") == C.tiny().text.num_layers - 1
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    flat, flat0 = jax.tree.leaves(grads), jax.tree.leaves(grads0)
    assert len(flat) == len(flat0)
    for g, g0 in zip(flat, flat0):
        scale = float(np.abs(np.asarray(g0)).max())  # fp32 sums in another order: the remat test's tolerance
        np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-4, atol=1e-5 * scale)
