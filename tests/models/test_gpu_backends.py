"""On a GPU: the cuDNN attention backend agrees with the XLA reference in bf16 for all three towers
(text with cache, vision block-diagonal masks, audio chunk masks). Skipped on CPU."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models import layers as L
from omnirrm_jax.models import text as T
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from tests.models.test_thinker import batch_audio_in_video, batch_separate_streams

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN)")


def _models():
    cfg = C.tiny(dtype="bfloat16", param_dtype="bfloat16")
    ref = Thinker(dataclasses.replace(cfg, attention_backend="xla"), rngs=nnx.Rngs(0))
    fast = Thinker(dataclasses.replace(cfg, attention_backend="cudnn"), rngs=nnx.Rngs(0))
    return cfg, ref, fast


def test_auto_picks_cudnn_for_bf16_on_gpu():
    assert L.resolve_backend("auto", jnp.bfloat16) == "cudnn"
    assert L.resolve_backend("auto", jnp.float32) == "xla"


@pytest.mark.parametrize("make_batch", [batch_audio_in_video, batch_separate_streams])
def test_cudnn_matches_xla_bf16(make_batch):
    cfg, ref, fast = _models()
    inputs = prepare_inputs(cfg, **make_batch(np.random.default_rng(0), cfg))
    fwd = nnx.jit(lambda m, x: m.forward(x))
    a = np.asarray(fwd(ref, inputs)).astype(np.float32)
    b = np.asarray(fwd(fast, inputs)).astype(np.float32)
    valid = inputs["attention_mask"] == 1
    assert np.abs(a - b)[valid].max() / np.abs(a[valid]).max() < 0.02


def test_cudnn_cached_decode_step():
    cfg, ref, fast = _models()
    B, S = 2, 12
    ids = np.random.default_rng(0).integers(1, 400, (B, S))
    mask = np.ones((B, S), np.int32)
    mask[1, :4] = 0
    inputs = prepare_inputs(cfg, ids, mask)
    outs = []
    for m in (ref, fast):
        cache = T.init_cache(cfg, B, S + 4, prompt_mask_BT=jnp.asarray(mask))
        _, cache = nnx.jit(lambda m, x, c: m.forward(x, cache=c, cache_index=0))(m, inputs, cache)
        pos = jnp.asarray(inputs["position_ids"][:, :, -1:] + 1)
        logits, _ = nnx.jit(lambda m, t, p, c: m.decode_step(t, p, c, S))(m, jnp.ones((B, 1), jnp.int32), pos, cache)
        outs.append(np.asarray(logits).astype(np.float32))
    assert np.abs(outs[0] - outs[1]).max() / np.abs(outs[0]).max() < 0.02
