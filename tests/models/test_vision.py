"""Vision tower parity against the tiny re-randomised HF thinker (fp32 eager, highest matmul precision).

HF runs on a window-permuted sequence; we keep processor order with segment masks. Comparing the pooler
output and the per-block states (after undoing HF's permutation) checks that the two are equivalent.
Patch 2 / window 12 (3x3 merge-unit windows) keeps the runs fast while windows are ragged.

Tolerance: 1e-5 relative to the tensor's scale (max |ref|, at least 1). Random N(0, 0.2) weights give
activations up to ~30, where fp32 summation-order noise alone is ~1e-5 absolute: HF fp32 itself differs
from HF fp64 by ~1e-5 on the pooler output, and `test_matches_hf_default_patch_and_window` checks that we
are no farther from the fp64 result than HF fp32 is.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from omnirrm_jax.models import config as config_lib
from omnirrm_jax.models.params import assign_hf_tensors
from omnirrm_jax.models.vision import VisionEncoder, vision_aux
from tests.hf_tiny import tiny_hf_thinker, to_np

SMALL = dict(patch_size=2, window_size=12)
TOL = 1e-5
_fwd = nnx.jit(lambda m, x, aux: m(x, aux))
_fwd_hidden = nnx.jit(lambda m, x, aux: m(x, aux, output_hidden_states=True))


def _close(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err, scale = np.abs(ours - ref).max(), max(1.0, np.abs(ref).max())
    assert err <= TOL * scale, f"max abs diff {err:.3g} > {TOL} * {scale:.3g}"


def _cfg(patch_size, window_size, **runtime):
    cfg = config_lib.tiny(**runtime)
    vision = dataclasses.replace(cfg.vision, patch_size=patch_size, window_size=window_size)
    return dataclasses.replace(cfg, vision=vision)


def _build(patch_size, window_size, **runtime):
    hf = tiny_hf_thinker(0, patch_size=patch_size, window_size=window_size).model.visual
    cfg = _cfg(patch_size, window_size, **runtime)
    enc = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    assign_hf_tensors(enc, {k: v.detach().numpy() for k, v in hf.state_dict().items()}, source="hf visual")
    return hf, enc, cfg


@pytest.fixture(scope="module")
def small():
    return _build(**SMALL)


def _pixels(grids, cfg, seed=0):
    P = int(sum(t * h * w for t, h, w in grids))
    return np.random.default_rng(seed).standard_normal((P, cfg.vision.patch_dim)).astype(np.float32)


def _hf_run(hf, x, grids):
    with torch.no_grad():
        return hf(torch.from_numpy(x), grid_thw=torch.tensor(grids), output_hidden_states=True)


def _unpermute(h, grids, vcfg):
    """HF block states are in window order at merge-unit granularity; back to processor order."""
    window_index, _ = get_vision_window_index(torch.tensor(grids), vcfg.spatial_merge_size, vcfg.window_size,
                                              vcfg.patch_size)
    g = vcfg.spatial_merge_size**2
    h = to_np(h)
    return h.reshape(-1, g, h.shape[-1])[np.argsort(window_index.numpy())].reshape(h.shape)


@pytest.mark.parametrize("grids", [[(1, 20, 28)], [(2, 12, 8)], [(1, 16, 16), (2, 12, 8), (1, 20, 28), (1, 12, 12)]])
def test_matches_hf_pooler_and_blocks(small, grids):
    hf, enc, cfg = small
    x = _pixels(grids, cfg)
    ref = _hf_run(hf, x, grids)
    out, hidden = _fwd_hidden(enc, jnp.asarray(x), vision_aux(np.array(grids), cfg.vision))
    _close(out, to_np(ref.pooler_output))
    assert len(hidden) == len(ref.hidden_states) == cfg.vision.depth + 1
    for ours, theirs in zip(hidden, ref.hidden_states):
        _close(ours, _unpermute(theirs, grids, cfg.vision))
    _close(hidden[-1], _unpermute(ref.last_hidden_state, grids, cfg.vision))


def test_matches_hf_default_patch_and_window():
    hf, enc, cfg = _build(patch_size=14, window_size=112)
    grids = [(1, 20, 28)]
    x = _pixels(grids, cfg, seed=1)
    ref = to_np(_hf_run(hf, x, grids).pooler_output)
    out = np.asarray(_fwd(enc, jnp.asarray(x), vision_aux(np.array(grids), cfg.vision)))
    _close(out, ref)
    with torch.no_grad():
        ref64 = hf.double()(torch.from_numpy(x).double(), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    assert np.abs(out - ref64).max() <= 1.5 * np.abs(ref - ref64).max() + 1e-6


def test_aux_agrees_with_hf_helpers():
    """Rotary positions equal HF's; segment ids reproduce cu_seqlens and, in window order, cu_window_seqlens."""
    vcfg = _cfg(**SMALL).vision
    grids = [(1, 16, 16), (2, 12, 8), (1, 20, 28), (1, 12, 12)]
    g = torch.tensor(grids)
    aux = vision_aux(np.array(grids), vcfg)
    np.testing.assert_array_equal(aux["pos_P2"], get_vision_position_ids(g, vcfg.spatial_merge_size).numpy())

    def boundaries(seg):
        change = np.flatnonzero(np.diff(seg)) + 1
        return np.concatenate([[0], change, [len(seg)]])

    np.testing.assert_array_equal(boundaries(aux["full_P"]), get_vision_cu_seqlens(g).numpy())
    window_index, cu_window = get_vision_window_index(g, vcfg.spatial_merge_size, vcfg.window_size, vcfg.patch_size)
    permuted = aux["window_P"].reshape(-1, 4)[window_index.numpy()].reshape(-1)
    np.testing.assert_array_equal(boundaries(permuted), cu_window.numpy())
    assert len(np.unique(permuted)) == len(cu_window) - 1  # each window id is one contiguous HF segment
    assert aux["valid_P"].all()


def test_padding_and_jit(small):
    """Padded patches (junk pixels, segment -1) leave real outputs unchanged and come out as zero rows."""
    hf, enc, cfg = small
    grids = np.array([(2, 12, 8), (1, 20, 28)])
    x = _pixels(grids, cfg, seed=2)
    P = len(x)
    ref = np.asarray(_fwd(enc, jnp.asarray(x), vision_aux(grids, cfg.vision)))
    P_pad = P + 36
    aux = vision_aux(grids, cfg.vision, pad_to=P_pad)
    assert all(a.shape[0] == P_pad for a in aux.values())
    x_pad = np.concatenate([x, 100.0 * np.ones((P_pad - P, x.shape[1]), np.float32)])  # junk must not leak
    out = np.asarray(_fwd(enc, jnp.asarray(x_pad), {k: jnp.asarray(v) for k, v in aux.items()}))
    assert out.shape == (P_pad // 4, cfg.vision.out_hidden_size)
    np.testing.assert_allclose(out[: P // 4], ref, atol=1e-6 * max(1.0, np.abs(ref).max()), rtol=0)
    assert np.all(out[P // 4:] == 0)
    with pytest.raises(ValueError):
        vision_aux(grids, cfg.vision, pad_to=P + 2)  # breaks 2x2 merge groups


def test_bf16_runs_close_and_params_have_axes(small):
    hf, enc32, cfg = small
    enc = VisionEncoder(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(enc, nnx.state(enc32, nnx.Param))
    grids = np.array([(1, 16, 16)])
    x = jnp.asarray(_pixels(grids, cfg, seed=3))
    aux = vision_aux(grids, cfg.vision)
    out16, out32 = _fwd(enc, x, aux), _fwd(enc32, x, aux)
    assert out16.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32))
    assert rel < 5e-2, rel
    for path, var in nnx.to_flat_state(nnx.state(enc32, nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.ndim, path
