"""The shared-prefix decode attention: the Pallas kernel (interpreted on CPU) equals the XLA einsums, which
equal plain attention over each row's repeated cache; the sampler's cache layout (padding for the kernel); where
"auto" takes the kernel (`models.layers.resolve_shared_prefix_backend`, shapes from `SamplingConfig`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnirrm_jax.decoding import sampler as SM
from omnirrm_jax.decoding import shared_prefix as SP
from omnirrm_jax.models import layers as L


def _repeated(q, pk, pv, sk, sv, start, t, G, scale):
    """Each row's own cache [prompt; its sample's tokens], softmax attention in float64 numpy."""
    q, pk, pv, sk, sv = (np.asarray(a, np.float64) for a in (q, pk, pv, sk, sv))
    R, Hq, H = q.shape
    B, K, S, _ = pk.shape
    N = sk.shape[2] // G
    out = np.zeros_like(q)
    for r in range(R):
        b, g = divmod(r, G)
        for h in range(Hq):
            kh = h // (Hq // K)
            keys = np.concatenate([pk[b, kh, start[b]:], sk[b, kh].reshape(N, G, H)[:t, g]])
            vals = np.concatenate([pv[b, kh, start[b]:], sv[b, kh].reshape(N, G, H)[:t, g]])
            lg = keys @ q[r, h] * scale
            p = np.exp(lg - lg.max())
            out[r, h] = p @ vals / p.sum()
    return out


@pytest.mark.parametrize("B,G,Hq,K,H,S,N,start", [(2, 4, 4, 2, 16, 512, 256, (5, 512)),
                                                   (2, 2, 14, 2, 16, 512, 512, (5, 512)),
                                                   (2, 4, 4, 2, 16, 2048, 256, (1000, 130))])
def test_kernel_and_einsums_equal_attention_over_repeated_caches(B, G, Hq, K, H, S, N, start):
    """Padding in the prompt (a prompt wholly padding; several whole blocks of padding skipped inside a split),
    one to all suffix tokens filled, 7 query heads per kv head (the 7B's grouping: the kernel pads the query block
    to a power of two)."""
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (B * G, Hq, H))
    pk, pv = (jax.random.normal(k, (B, K, S, H)) for k in ks[1:3])
    sk, sv = (jax.random.normal(k, (B, K, N * G, H)) for k in ks[3:5])
    start = np.array(start)
    for t in (1, 37, N):
        want = _repeated(q, pk, pv, sk, sv, start, t, G, H ** -0.5)
        for backend in ("xla", "pallas"):
            got = SP.attention(q, pk, pv, sk, sv, jnp.asarray(start), t, num_samples=G, scale=H ** -0.5,
                               backend=backend)
            np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, err_msg=f"backend={backend} t={t}")


@pytest.mark.parametrize("splits,block", [(1, 128), (5, 64), (16, 32)])
def test_every_split_count_and_block_size_deals_out_the_same_attention(splits, block):
    """The splits share out the blocks to read (the prefix's from the first valid one, then the filled suffix's):
    one split reading all, more splits than blocks (some read nothing), uneven shares."""
    B, G, Hq, K, H, S, N = 2, 4, 4, 2, 16, 256, 64
    ks = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(ks[0], (B * G, Hq, H))
    pk, pv = (jax.random.normal(k, (B, K, S, H)) for k in ks[1:3])
    sk, sv = (jax.random.normal(k, (B, K, N * G, H)) for k in ks[3:5])
    start = np.array([3, 200])
    for t in (1, 9, N):
        want = _repeated(q, pk, pv, sk, sv, start, t, G, H ** -0.5)
        got = SP._pallas_attention(q, pk, pv, sk, sv, jnp.asarray(start, jnp.int32), jnp.asarray(t, jnp.int32), G=G,
                                   scale=H ** -0.5, splits=splits, block=block)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, err_msg=f"t={t}")


def test_kernel_layout_padding():
    """The prefix slots and the suffix rows (G a position) are padded to a power of two of at least one block."""
    assert SP.BLOCK == 128
    assert SP.padded_sizes(1024, 512, 8, "pallas") == (1024, 512)
    assert SP.padded_sizes(1000, 160, 8, "pallas") == (1024, 256)
    assert SP.padded_sizes(1500, 300, 8, "pallas") == (2048, 512)
    assert SP.padded_sizes(100, 7, 2, "pallas") == (128, 64)
    assert SP.padded_sizes(1000, 160, 3, "xla") == (1000, 160)
    with pytest.raises(ValueError, match="power of two"):
        SP.padded_sizes(1000, 160, 6, "pallas")


def _resolve(name, G, Hq, K, H, sampling=None):
    """What the sampler asks for: `name` with the auto envelope of `sampling` (the defaults when None)."""
    sampling = sampling or SM.SamplingConfig(1)
    return L.resolve_shared_prefix_backend(name, num_samples=G, num_heads=Hq, num_kv_heads=K, head_dim=H,
                                           auto_max_query_rows=sampling.shared_prefix_kernel_max_rows,
                                           auto_head_dim=sampling.shared_prefix_kernel_head_dim)


def test_auto_takes_the_kernel_only_where_measured(monkeypatch):
    """auto takes the kernel on one GPU for the query blocks it was measured with (the defaults: <= 64 rows,
    head_dim 128); the envelope is configuration; an explicit backend is kept."""
    assert _resolve("auto", 8, 16, 2, 128) == "xla" or jax.default_backend() == "gpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert _resolve("auto", 8, 16, 2, 128) == "pallas"  # 3B, G = 8: 64 rows
    assert _resolve("auto", 8, 28, 4, 128) == "pallas"  # 7B: 7 heads per kv head, 56 rows padded to 64
    assert _resolve("auto", 2, 16, 2, 128) == "pallas"
    assert _resolve("auto", 16, 16, 2, 128) == "xla"  # 128 rows: not measured
    assert _resolve("auto", 6, 16, 2, 128) == "xla"  # G not a power of two
    assert _resolve("auto", 8, 16, 2, 64) == "xla"
    assert _resolve("auto", 1, 16, 2, 128) == "xla"
    wider = SM.SamplingConfig(1, shared_prefix_kernel_max_rows=128, shared_prefix_kernel_head_dim=64)
    assert _resolve("auto", 16, 16, 2, 64, wider) == "pallas"
    assert _resolve("auto", 6, 16, 2, 64, wider) == "xla"  # the layout still wants G a power of two
    assert _resolve("xla", 8, 16, 2, 128) == "xla" and _resolve("pallas", 6, 16, 2, 64) == "pallas"
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    assert _resolve("auto", 8, 16, 2, 128) == "xla"  # a mesh: the kernel is not partitioned
    with pytest.raises(ValueError, match="unknown shared-prefix attention backend"):
        _resolve("cudnn", 8, 16, 2, 128)
    with pytest.raises(ValueError, match="shared_prefix_kernel"):
        SM.SamplingConfig(4, shared_prefix_kernel="cudnn")
