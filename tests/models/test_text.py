"""Text decoder parity with transformers (fp32, highest precision) and KV-cache consistency."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from omnirrm_jax.decoding.cache import init_cache
from omnirrm_jax.models import config as C
from omnirrm_jax.models import params as P
from omnirrm_jax.models import text as T
from tests.hf_tiny import tiny_hf_thinker, to_np


@pytest.fixture(scope="module")
def pair():
    hf = tiny_hf_thinker(seed=1)
    cfg = C.tiny()
    ours = T.TextModel(cfg, rngs=nnx.Rngs(0))
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    # transformers v5 names in memory are model.language_model.*; checkpoints use model.*
    tensors = {k.replace("model.language_model.", "model."): v for k, v in sd.items()
               if k.startswith("model.language_model.")}
    P.assign_hf_tensors(ours, tensors, prefix="model.")
    return hf, ours, cfg


def _inputs(B=2, S=11, seed=0):
    rng = np.random.default_rng(seed)
    embeds = rng.normal(size=(B, S, 64)).astype(np.float32)
    # non-monotonic, large positions like audio-in-video / video rows
    pos = np.stack([rng.integers(0, 300, size=(B, S)) for _ in range(3)]).astype(np.int64)
    mask = np.ones((B, S), np.int64)
    mask[1, :3] = 0  # left padding on row 1
    return embeds, pos, mask


def test_decoder_matches_hf_per_layer(pair):
    hf, ours, _ = pair
    embeds, pos, mask = _inputs()
    with torch.no_grad():
        out = hf.model.language_model(inputs_embeds=torch.tensor(embeds), position_ids=torch.tensor(pos),
                                      attention_mask=torch.tensor(mask), output_hidden_states=True)
        logits_hf = to_np(hf.lm_head(out.last_hidden_state))
    final, _, hidden = ours(jnp.asarray(embeds), jnp.asarray(pos), jnp.asarray(mask), output_hidden_states=True)
    valid = mask.astype(bool)
    for i, (h_ours, h_hf) in enumerate(zip(hidden[:-1], out.hidden_states[:-1])):
        np.testing.assert_allclose(np.asarray(h_ours)[valid], to_np(h_hf)[valid], atol=1e-5, rtol=1e-5,
                                   err_msg=f"hidden state entering layer {i}")
    np.testing.assert_allclose(np.asarray(final)[valid], to_np(out.last_hidden_state)[valid], atol=1e-5, rtol=1e-5)
    # lm_head applied by the test: the thinker test covers the head itself
    head = hf.lm_head.weight.detach().numpy()
    logits = np.asarray(final) @ head.T
    scale = np.abs(logits_hf[valid]).max()
    assert np.abs(logits[valid] - logits_hf[valid]).max() / scale < 1e-5


def test_rotary_matches_hf(pair):
    hf, _, cfg = pair
    _, pos, _ = _inputs()
    x = torch.zeros(1, dtype=torch.float32)
    cos_hf, sin_hf = hf.model.language_model.rotary_emb(x, torch.tensor(pos))
    cos, sin = T.mrope_cos_sin(jnp.asarray(pos), head_dim=16, theta=1e6, section=(2, 3, 3), dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(cos), to_np(cos_hf), atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), to_np(sin_hf), atol=2e-6)


def test_kv_cache_prefill_then_decode_equals_uncached(pair):
    """Prefill 7 tokens, then 8 one-token cached steps == one uncached forward over all 15 (left padding too)."""
    _, ours, cfg = pair
    B, P0, N = 2, 7, 8
    embeds, pos, mask = _inputs(B, P0 + N, seed=3)
    mask[:, P0:] = 1
    full, _, _ = ours(jnp.asarray(embeds), jnp.asarray(pos), jnp.asarray(mask))
    cache = init_cache(cfg, B, max_len=P0 + N + 5, prompt_mask_BT=jnp.asarray(mask[:, :P0]))
    step = nnx.jit(lambda m, e, p, c, i: m(e, p, cache=c, cache_index=i)[:2])
    out, cache = step(ours, jnp.asarray(embeds[:, :P0]), jnp.asarray(pos[:, :, :P0]), cache, 0)
    outs = [out]
    for t in range(P0, P0 + N):
        out, cache = step(ours, jnp.asarray(embeds[:, t:t + 1]), jnp.asarray(pos[:, :, t:t + 1]), cache, t)
        outs.append(out)
    cached = np.concatenate([np.asarray(o) for o in outs], axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(cached[valid], np.asarray(full)[valid], atol=1e-5, rtol=1e-5)
