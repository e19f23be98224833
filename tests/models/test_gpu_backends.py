"""On a GPU: the cuDNN attention backend agrees with the XLA reference in bf16 for all three towers
(text with cache, vision block-diagonal masks, audio chunk masks). Skipped on CPU."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.decoding.cache import init_cache
from omnirrm_jax.models import config as C
from omnirrm_jax.models import layers as L
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from tests.models.test_thinker import batch_audio_in_video, batch_separate_streams

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN)")


def _models():
    """bf16 models on the XLA and cuDNN backends, plus an fp32 XLA model holding the same (bf16-rounded)
    weights: the precision reference both bf16 backends are measured against."""
    cfg = C.tiny(dtype="bfloat16", param_dtype="bfloat16")
    ref32 = Thinker(C.tiny(attention_backend="xla"), rngs=nnx.Rngs(0))
    state = nnx.state(ref32, nnx.Param)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)
    nnx.update(ref32, jax.tree.map(lambda x: x.astype(jnp.float32), rounded))
    out = [ref32]
    for backend in ("xla", "cudnn"):
        m = Thinker(dataclasses.replace(cfg, attention_backend=backend), rngs=nnx.Rngs(0))
        nnx.update(m, rounded)
        out.append(m)
    return cfg, *out


def test_auto_picks_cudnn_for_bf16_on_gpu():
    assert L.resolve_backend("auto", jnp.bfloat16) == "cudnn"
    assert L.resolve_backend("auto", jnp.float32) == "xla"


def _assert_no_worse(ref32, xla16, cudnn16, valid):
    """cuDNN bf16 may differ from XLA bf16 by rounding only: it must be as close to fp32 as XLA bf16 is."""
    e_xla, e_cudnn = np.abs(xla16 - ref32)[valid], np.abs(cudnn16 - ref32)[valid]
    assert e_cudnn.max() <= 1.5 * e_xla.max() + 1e-3, (e_cudnn.max(), e_xla.max())
    assert e_cudnn.mean() <= 1.5 * e_xla.mean() + 1e-4, (e_cudnn.mean(), e_xla.mean())


@pytest.mark.parametrize("make_batch", [batch_audio_in_video, batch_separate_streams])
def test_cudnn_matches_xla_bf16(make_batch):
    cfg, ref32, xla16, cudnn16 = _models()
    inputs = prepare_inputs(cfg, **make_batch(np.random.default_rng(0), cfg))
    fwd = nnx.jit(lambda m, x: m.forward(x))
    outs = [np.asarray(fwd(m, inputs)).astype(np.float32) for m in (ref32, xla16, cudnn16)]
    _assert_no_worse(*outs, inputs["attention_mask"] == 1)


def test_cudnn_cached_decode_step():
    cfg, ref32, xla16, cudnn16 = _models()
    B, S = 2, 12
    ids = np.random.default_rng(0).integers(1, 400, (B, S))
    mask = np.ones((B, S), np.int32)
    mask[1, :4] = 0
    inputs = prepare_inputs(cfg, ids, mask)
    outs = []
    for m in (ref32, xla16, cudnn16):
        cache = init_cache(m.config, B, S + 4, prompt_mask_BT=jnp.asarray(mask))
        _, cache = nnx.jit(lambda m, x, c: m.forward(x, cache=c, cache_index=0))(m, inputs, cache)
        pos = jnp.asarray(inputs["position_ids"][:, :, -1:] + 1)
        logits, _ = nnx.jit(lambda m, t, p, c: m.decode_step(t, p, c, S))(m, jnp.ones((B, 1), jnp.int32), pos, cache)
        outs.append(np.asarray(logits).astype(np.float32))
    _assert_no_worse(*outs, np.ones(outs[0].shape[:2], bool))
