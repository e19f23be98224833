"""The SFT step on a packed batch: the same loss and LoRA gradients as one unpacked batch of the same examples
(text and image examples), so packing changes the throughput, not the objective."""
import jax
import numpy as np
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora, losses
from tests.models.test_packing import _examples, _packed, _unpacked


def test_packed_step_has_the_unpacked_loss_and_gradients():
    cfg = C.tiny(attention_backend="xla", remat="full")  # remat too: segment ids go through jax.checkpoint
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    graphdef, trainable, frozen = nnx.split(model, nnx.LoRAParam, ...)
    # LoRA B starts at zero; random B makes the LoRA A gradients non-zero too
    trainable = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape, x.dtype), trainable)
    exs, rows = _examples(cfg, with_image=True)
    grad = jax.jit(jax.value_and_grad(losses.sft_loss, has_aux=True), static_argnums=(2,))
    (loss_u, aux_u), g_u = grad(trainable, frozen, graphdef, _unpacked(cfg, exs, 48))
    (loss_p, aux_p), g_p = grad(trainable, frozen, graphdef, _packed(cfg, rows, 48))
    assert float(aux_p["target_tokens"]) == float(aux_u["target_tokens"])
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_u)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_pack_is_an_sft_pipeline_setting_without_a_loss_window():
    import pytest

    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import plan
    from omnirrm_jax.training.grpo_config import GRPOConfig

    over = ["data.pipeline.pack=true", "data.pipeline.max_target_length=256", "data.pipeline.seq_buckets=[1024,2048]",
            "run.max_steps=10"]
    cfg = config_lib.load_config(None, over)
    assert config_lib.pipeline_config(cfg.data.pipeline).pack
    w = plan.workload(cfg)
    assert (w.seq, w.head_positions) == (2048, 2048)  # packed rows are full and their targets sit mid-row
    with pytest.raises(config_lib.ConfigError, match="pack is for SFT"):
        config_lib.load_config(None, ["data.pipeline.pack=true"], cls=GRPOConfig)
    with pytest.raises(config_lib.ConfigError, match="pack_buffer"):
        config_lib.load_config(None, ["data.pipeline.pack_buffer=0"])
