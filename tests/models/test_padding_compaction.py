"""The no-cache decoder moves padding to the end of each row and attends with a plain causal mask: every real
token must get exactly what it gets when its row is run alone, unpadded, whatever the padding pattern."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models.text import TextModel


@pytest.mark.parametrize("pattern", ["left", "right", "holes"])
def test_padded_rows_equal_unpadded_rows(pattern):
    cfg = C.tiny()
    model = TextModel(cfg, rngs=nnx.Rngs(0))
    B, T, D = 3, 12, cfg.text.hidden_size
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.ones((B, T), bool)
    if pattern == "left":
        mask[0, :5], mask[1, :1] = False, False
    elif pattern == "right":
        mask[0, 7:], mask[2, 11:] = False, False
    else:
        mask[0, [0, 3, 4, 9]], mask[1, [6]] = False, False
    pos = np.zeros((3, B, T), np.int32)
    for b in range(B):
        pos[:, b, mask[b]] = np.arange(mask[b].sum()) * np.array([[1], [1], [1]])
    # a few mRoPE rows where height/width differ from time, as for media tokens
    pos[1, :, 2:4] += 3
    out, _, hidden = model(jnp.asarray(x), jnp.asarray(pos), jnp.asarray(mask), output_hidden_states=True)
    for b in range(B):
        keep = mask[b]
        alone, _, hidden_alone = model(jnp.asarray(x[b:b + 1, keep]), jnp.asarray(pos[:, b:b + 1, keep]),
                                       output_hidden_states=True)
        np.testing.assert_allclose(np.asarray(out[b, keep]), np.asarray(alone[0]), rtol=2e-5, atol=2e-5)
        for h, h_alone in zip(hidden, hidden_alone):  # per-layer states come back in the input's order too
            np.testing.assert_allclose(np.asarray(h[b, keep]), np.asarray(h_alone[0]), rtol=2e-5, atol=2e-5)
    assert np.isfinite(np.asarray(out)).all()  # padding rows compute junk, but finite junk


@pytest.mark.parametrize("scan_layers", [True, False])
def test_compaction_uses_causal_attention_without_a_mask(monkeypatch, scan_layers):
    from omnirrm_jax.models import layers as L

    seen = []
    real = L._BACKENDS["xla"]

    def spy(q, k, v, *, mask, is_causal, scale):
        seen.append((mask is None, is_causal))
        return real(q, k, v, mask=mask, is_causal=is_causal, scale=scale)

    monkeypatch.setitem(L._BACKENDS, "xla", spy)
    cfg = C.tiny(attention_backend="xla", scan_layers=scan_layers)
    model = TextModel(cfg, rngs=nnx.Rngs(0))
    mask = jnp.asarray([[0, 1, 1, 1]], bool)
    model(jnp.ones((1, 4, cfg.text.hidden_size)), jnp.zeros((3, 1, 4), jnp.int32), mask)
    assert seen == [(True, True)] * (1 if scan_layers else cfg.text.num_layers)  # a scan traces one layer
