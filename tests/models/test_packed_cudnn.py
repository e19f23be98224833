"""GPU only: cuDNN's per-segment (packed layout) attention equals the causal-and-same-segment mask computed in fp32,
outputs and gradients, at the 3B thinker's heads (16 query heads over 2 kv heads of 128) in bf16; padding rows
stay finite. Runs where JAX has a GPU (`python tests/models/test_packed_cudnn.py` prints the errors)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnirrm_jax.models import layers as L

needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
LENGTHS = [[300, 37, 120, 1], [512, 0, 0, 0], [200, 312, 0, 0], [0, 0, 0, 0]]  # padded, full, two, all padding


def _inputs(T=512, N=16, K=2, H=128, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    lengths = np.asarray(LENGTHS, np.int32)
    ids = np.zeros((len(lengths), T), np.int32)
    for r, row in enumerate(lengths):
        at = 0
        for j, n in enumerate(row):
            ids[r, at:at + n], at = j + 1, at + n
    B = len(lengths)
    q = jax.random.normal(ks[0], (B, T, N, H), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, K, H), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, K, H), jnp.bfloat16)
    w = jax.random.normal(ks[3], (B, T, N, H), jnp.float32)
    return q, k, v, w, L.PackedRows(jnp.asarray(ids), jnp.asarray(lengths))


def errors(repeat_kv=False):
    """Largest |packed cuDNN - fp32 reference| over real tokens, relative to the reference's largest value: output
    and the gradients of a weighted sum over real tokens with respect to q, k, v."""
    q, k, v, w, packed = _inputs()
    real = (packed.ids_BT > 0)[:, :, None, None]
    scale = 128 ** -0.5

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real, fn(q, k, v).astype(jnp.float32) * w, 0.0))

    def packed_fn(q, k, v):
        return L._cudnn_packed_attention(q, k, v, packed=packed, scale=scale, repeat_kv=repeat_kv)

    def reference(q, k, v):
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        return L._xla_attention(*f32, mask=L.packed_mask(packed.ids_BT), is_causal=False, scale=scale)

    out = jax.jit(packed_fn)(q, k, v)
    ref = reference(q, k, v)
    res = {"finite": bool(jnp.isfinite(out.astype(jnp.float32)).all()),
           "out": float(jnp.max(jnp.abs(jnp.where(real, out.astype(jnp.float32) - ref, 0))) / jnp.max(jnp.abs(ref)))}
    g = jax.jit(jax.grad(lambda *a: loss(packed_fn, *a), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g, g_ref):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        res[f"d{name}"] = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        res[f"d{name}_finite"] = bool(jnp.isfinite(a).all())
    return res


@needs_gpu
def test_packed_cudnn_attention_equals_the_segment_mask():
    res = errors()
    assert res["finite"] and res["dq_finite"] and res["dk_finite"] and res["dv_finite"], res
    for key in ("out", "dq", "dk", "dv"):
        assert res[key] < 2e-2, (key, res)


if __name__ == "__main__":
    print(jax.devices()[0].device_kind, jax.__version__, "kv offsets exact:", L._cudnn_packed_kv_offsets_exact(),
          "packed layout supported:", L._cudnn_packed_layout_supported())
    for repeat in (False, True):
        try:
            print("repeat_kv", repeat, errors(repeat))
        except Exception as e:  # noqa: BLE001 - a diagnostic run prints what failed
            print("repeat_kv", repeat, "failed:", type(e).__name__, str(e)[:2000])
