"""The decoder layers as one `lax.scan` (`ThinkerConfig.scan_layers=True`, `models.text._scanned_layers`) compute what
the Python loop computes, on every multi-token path: padded and packed rows, a prefill into a KV cache and
tokens over it, and with layers the scan cannot stack (it falls back to the loop)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.decoding.cache import init_cache
from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora


def _models(cfg, with_lora=True):
    """The same weights twice: scanned and looped."""
    out = []
    for scan in (True, False):
        model = Thinker(dataclasses.replace(cfg, scan_layers=scan), rngs=nnx.Rngs(0))
        if with_lora:
            lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
            for i, layer in enumerate(lora.linear_paths(model).values()):
                if layer.lora_b is not None:  # B starts at zero: give the branch a say
                    layer.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), layer.lora_b.shape)
        out.append(model)
    return out


def _inputs(cfg, B=2, T=12, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, T, cfg.text.hidden_size)).astype(np.float32))
    pos = jnp.asarray(np.broadcast_to(np.arange(T), (3, B, T)).astype(np.int32))
    return x, pos


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_padded_rows_equal_the_loop_and_trace_one_layer(remat):
    cfg = C.tiny(remat=remat)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_layers=4))
    scanned, looped = _models(cfg)
    x, pos = _inputs(cfg)
    mask = jnp.asarray([[1] * 12, [0] * 3 + [1] * 9], bool)
    _close(scanned.model(x, pos, mask)[0], looped.model(x, pos, mask)[0])
    # the scan's program holds one layer: a quarter of the loop's matmuls (plus none outside the layers)
    dots = [str(jax.make_jaxpr(lambda x: m.model(x, pos, mask)[0])(x)).count("dot_general") for m in (scanned, looped)]
    assert dots[1] == 4 * dots[0]


def test_packed_rows_equal_the_loop():
    cfg = C.tiny()
    scanned, looped = _models(cfg)
    x, pos = _inputs(cfg, B=1, T=10)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0]], jnp.int32)
    _close(scanned.model(x, pos, seg > 0, segment_ids_BT=seg)[0], looped.model(x, pos, seg > 0, segment_ids_BT=seg)[0])


def test_prefill_into_a_cache_then_tokens_over_it_equal_the_loop():
    """A prompt written into a KV cache (scanned), then a 3-token continuation over it (scanned: T > 1) and one
    decode step (always the loop): the caches and outputs equal the loop's."""
    cfg = C.tiny()
    scanned, looped = _models(cfg)
    x, pos = _inputs(cfg, B=2, T=8)
    prompt_mask = jnp.asarray([[1] * 8, [0] * 2 + [1] * 6], bool)
    outs = []
    for m in (scanned, looped):
        cache = init_cache(cfg, 2, 16, prompt_mask)
        h1, cache, _ = m.model(x, pos, cache=cache, cache_index=0)
        h2, cache, _ = m.model(x[:, :3] * 0.5, pos[:, :, :3] + 8, cache=cache, cache_index=8)
        h3, cache, _ = m.model(x[:, :1] * 2.0, pos[:, :, :1] + 11, cache=cache, cache_index=11)
        outs.append((h1, h2, h3, cache.k, cache.v))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        _close(a, b)


def test_layers_that_differ_fall_back_to_the_loop():
    """A LoRA pattern can give one layer its own scale (a static attribute): the layers no longer stack, and the
    model runs the loop, with the same result as `scan_layers=False`."""
    cfg = C.tiny()
    scanned, looped = _models(cfg)
    for m in (scanned, looped):
        m.model.layers[0].self_attn.q_proj.lora_scale = 7.0
    x, pos = _inputs(cfg)
    mask = jnp.ones((2, 12), bool)
    _close(scanned.model(x, pos, mask)[0], looped.model(x, pos, mask)[0])
    assert " scan[" not in str(jax.make_jaxpr(lambda x: scanned.model(x, pos, mask)[0])(x))


def test_the_run_config_option_reaches_the_model_config():
    import types

    from omnirrm_jax.training.config import ModelSpec
    from omnirrm_jax.training.run import resolve_thinker_config

    ids = dict(audio=500, image=501, video=502, audio_bos=503, audio_eos=504, vision_bos=505, vision_eos=506)
    tok = types.SimpleNamespace(vocab_size=512, special_ids=ids)
    assert resolve_thinker_config(ModelSpec(preset="tiny", scan_layers=True), tok).scan_layers
    assert not resolve_thinker_config(ModelSpec(preset="tiny"), tok).scan_layers


def test_layers_with_other_lora_ranks_fall_back_to_the_loop():
    """LoRA ranks are array shapes, not graphdef attributes: an adapter with a rank pattern (scales equal, as with
    alpha = 2r) gives graphdefs that compare equal and factors that do not stack. The loop runs them."""
    cfg = C.tiny()
    models = [Thinker(dataclasses.replace(cfg, scan_layers=scan), rngs=nnx.Rngs(0)) for scan in (True, False)]
    for m in models:
        for i, layer in enumerate(m.model.layers):
            layer.mlp.up_proj.add_lora(4 * (i + 1), 8.0 * (i + 1), nnx.Rngs(i))
            layer.mlp.up_proj.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), layer.mlp.up_proj.lora_b.shape)
    x, pos = _inputs(cfg)
    mask = jnp.ones((2, 12), bool)
    _close(models[0].model(x, pos, mask)[0], models[1].model(x, pos, mask)[0])
