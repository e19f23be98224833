"""Qwen2.5-Omni vision tower (Qwen2.5-VL ViT with separate q/k/v, window attention, 2x2 patch merger).

HF permutes the patch sequence into windows (at merge-unit granularity), runs packed attention over
`cu_seqlens`, and un-permutes after the merger. We keep the processor order throughout and express both
the window and the full (per temporal slice) attention as block-diagonal masks built from per-patch
segment ids. Attention is permutation-equivariant and the rotary angles travel with their patch, so the
two formulations are equal; the parity test checks it. Every grid-dependent quantity is computed on the
host by `vision_aux` so the encoder itself has static shapes and jits once per padded length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.models import layers
from omnirrm_jax.models.config import ThinkerConfig, VisionConfig
from omnirrm_jax.models.layers import CONV, EMBED, HEADS, MLP, Linear, RMSNorm

_EPS = 1e-6  # vision RMSNorm eps is hard-coded in HF, not read from the config


def vision_aux(grid_thw: np.ndarray, vcfg: VisionConfig, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Host-side (numpy) inputs of `VisionEncoder` for the items described by `grid_thw` (n, 3).

    Returns, for P patches in processor order (padded to `pad_to` when given):
      pos_P2:     int32 (row, col) of each patch inside its frame, the 2-D rotary positions.
      window_P:   int32 window segment id (unique over items and temporal slices); padding gets -1.
      full_P:     int32 full-attention segment id, one per temporal slice of each item; padding gets -1.
      valid_P:    bool, False for padding.
    Padded patches only share a segment with other padded patches, so they never touch real ones.
    `pad_to` must be a multiple of spatial_merge_size**2 so that merge groups stay aligned.
    """
    grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    m = vcfg.spatial_merge_size
    vws = vcfg.window_size // m // vcfg.patch_size  # window side in merge units
    if vws < 1:
        raise ValueError(f"window_size {vcfg.window_size} is smaller than one merge unit")
    pos, win, full = [], [], []
    win_off = full_off = 0
    for t, h, w in grid_thw.tolist():
        if h % m or w % m or t < 1:
            raise ValueError(f"grid (t={t}, h={h}, w={w}) is not a multiple of spatial_merge_size {m}")
        # Block-major order (processor order): (block_row, block_col, row_in_block, col_in_block).
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows = rows.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        n_win_h, n_win_w = -(-(h // m) // vws), -(-(w // m) // vws)
        win_hw = (rows // m // vws) * n_win_w + (cols // m // vws)  # windows tiled from the top-left
        frames = np.arange(t)[:, None]
        pos.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
        win.append((win_off + frames * n_win_h * n_win_w + win_hw[None]).reshape(-1))
        full.append(np.repeat(full_off + np.arange(t), h * w))
        win_off += t * n_win_h * n_win_w
        full_off += t
    pos_P2 = np.concatenate(pos).astype(np.int32) if pos else np.zeros((0, 2), np.int32)
    window_P = np.concatenate(win).astype(np.int32) if win else np.zeros((0,), np.int32)
    full_P = np.concatenate(full).astype(np.int32) if full else np.zeros((0,), np.int32)
    P = len(full_P)
    P_pad = P if pad_to is None else int(pad_to)
    if P_pad < P:
        raise ValueError(f"pad_to={pad_to} is smaller than the {P} patches of grid_thw")
    if P_pad % (m * m):
        raise ValueError(f"pad_to={pad_to} must be a multiple of spatial_merge_size**2 = {m * m}")
    extra = P_pad - P
    return {
        "pos_P2": np.pad(pos_P2, ((0, extra), (0, 0))),
        "window_P": np.pad(window_P, (0, extra), constant_values=-1),
        "full_P": np.pad(full_P, (0, extra), constant_values=-1),
        "valid_P": np.arange(P_pad) < P,
    }


def _segment_mask(seg_P: jax.Array) -> jax.Array:
    """(1, P, P) block-diagonal mask: a patch sees exactly the patches of its own segment."""
    return (seg_P[:, None] == seg_P[None, :])[None]


def vision_rotary(pos_P2: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Axial 2-D rotary (HF `Qwen2_5OmniVisionRotaryEmbedding`) in fp32: H/4 frequencies of the row and H/4
    of the column, concatenated and duplicated to H. Returns cos, sin of shape (P, H)."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial, 2, dtype=jnp.float32) / spatial))
    freqs = pos_P2.astype(jnp.float32)[..., None] * inv_freq  # (P, 2, H/4)
    freqs = freqs.reshape(freqs.shape[0], -1)  # [row freqs, col freqs]
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(freqs), jnp.sin(freqs)


def _apply_rotary(x_PNH: jax.Array, cos_PH: jax.Array, sin_PH: jax.Array) -> jax.Array:
    """Rotates in fp32 and casts back, as HF `apply_rotary_pos_emb_vision`."""
    x32 = x_PNH.astype(jnp.float32)
    out = x32 * cos_PH[:, None] + layers.rotate_half(x32) * sin_PH[:, None]
    return out.astype(x_PNH.dtype)


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention restricted by a segment mask; q/k/v/proj all with bias."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.q = Linear(v.hidden_size, v.hidden_size, axes=(EMBED, HEADS), **kw)
        self.k = Linear(v.hidden_size, v.hidden_size, axes=(EMBED, HEADS), **kw)
        self.v = Linear(v.hidden_size, v.hidden_size, axes=(EMBED, HEADS), **kw)
        self.proj = Linear(v.hidden_size, v.hidden_size, axes=(HEADS, EMBED), **kw)
        self.num_heads, self.head_dim = v.num_heads, v.head_dim
        self.backend = cfg.attention_backend

    def __call__(self, x_PD: jax.Array, cos_PH: jax.Array, sin_PH: jax.Array, mask_1PP: jax.Array) -> jax.Array:
        P = x_PD.shape[0]
        shape = (P, self.num_heads, self.head_dim)
        q_PNH = _apply_rotary(self.q(x_PD).reshape(shape), cos_PH, sin_PH)
        k_PNH = _apply_rotary(self.k(x_PD).reshape(shape), cos_PH, sin_PH)
        v_PNH = self.v(x_PD).reshape(shape)
        out_1PNH = layers.attention(q_PNH[None], k_PNH[None], v_PNH[None], mask_BTS=mask_1PP, is_causal=False,
                                    scale=self.head_dim**-0.5, backend=self.backend)
        return self.proj(out_1PNH.reshape(P, -1))


class VisionMLP(nnx.Module):
    """SiLU-gated MLP with biases (HF `Qwen2_5OmniMLP(bias=True)`)."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.gate_proj = Linear(v.hidden_size, v.intermediate_size, axes=(EMBED, MLP), **kw)
        self.up_proj = Linear(v.hidden_size, v.intermediate_size, axes=(EMBED, MLP), **kw)
        self.down_proj = Linear(v.intermediate_size, v.hidden_size, axes=(MLP, EMBED), **kw)

    def __call__(self, x_PD: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x_PD)) * self.up_proj(x_PD))


class VisionBlock(nnx.Module):
    """Pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        D = cfg.vision.hidden_size
        self.norm1 = RMSNorm(D, eps=_EPS, param_dtype=cfg.param_dtype)
        self.norm2 = RMSNorm(D, eps=_EPS, param_dtype=cfg.param_dtype)
        self.attn = VisionAttention(cfg, rngs=rngs)
        self.mlp = VisionMLP(cfg, rngs=rngs)

    def __call__(self, x_PD, cos_PH, sin_PH, mask_1PP):
        x_PD = x_PD + self.attn(self.norm1(x_PD), cos_PH, sin_PH, mask_1PP)
        return x_PD + self.mlp(self.norm2(x_PD))


class PatchMerger(nnx.Module):
    """ln_q per patch, then each 4 consecutive patches (one 2x2 merge group) -> Linear -> GELU -> Linear."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        D4 = v.hidden_size * v.spatial_merge_size**2
        kw = dict(use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.ln_q = RMSNorm(v.hidden_size, eps=_EPS, param_dtype=cfg.param_dtype)
        self.mlp_0 = Linear(D4, D4, axes=(EMBED, MLP), **kw)
        self.mlp_2 = Linear(D4, v.out_hidden_size, axes=(MLP, EMBED), **kw)
        self.group = v.spatial_merge_size**2

    def __call__(self, x_PD: jax.Array) -> jax.Array:
        x_QD4 = self.ln_q(x_PD).reshape(x_PD.shape[0] // self.group, -1)
        return self.mlp_2(layers.gelu_exact(self.mlp_0(x_QD4)))


class PatchEmbed(nnx.Module):
    """The Conv3d with stride = kernel is a Dense over the flattened (C, T, p, p) patch rows."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        self.proj = Linear(v.patch_dim, v.hidden_size, use_bias=False, axes=(CONV, EMBED), dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, x_PC: jax.Array) -> jax.Array:
        return self.proj(x_PC)


class VisionEncoder(nnx.Module):
    """The vision tower; attribute names mirror the checkpoint (`visual.*`) for `assign_hf_tensors`."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        if v.hidden_size % v.num_heads or (v.head_dim // 2) % 2:
            raise ValueError(f"vision head_dim {v.head_dim} must be an integer multiple of 4")
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, rngs=rngs) for _ in range(v.depth)])
        self.merger = PatchMerger(cfg, rngs=rngs)
        self.head_dim, self.rope_theta = v.head_dim, float(v.rope_theta)
        self.fullatt_block_indexes = tuple(v.fullatt_block_indexes)
        self.dtype = layers.as_dtype(cfg.dtype)
        self.group = v.spatial_merge_size**2

    def __call__(self, pixel_values_PC: jax.Array, aux: dict, *, output_hidden_states: bool = False):
        """(P, patch_dim) pixels + `vision_aux` arrays -> (P // 4, out_hidden_size) in processor order.

        With `output_hidden_states`, also returns depth + 1 per-patch states (embeddings, then each block's
        output), like HF but in processor order. Rows of padded patches are zeroed in the output.
        """
        x_PD = self.patch_embed(pixel_values_PC.astype(self.dtype))
        cos_PH, sin_PH = vision_rotary(jnp.asarray(aux["pos_P2"]), self.head_dim, self.rope_theta)
        full_mask = _segment_mask(jnp.asarray(aux["full_P"]))
        window_mask = _segment_mask(jnp.asarray(aux["window_P"]))
        hidden = [x_PD]
        for i, block in enumerate(self.blocks):
            mask = full_mask if i in self.fullatt_block_indexes else window_mask
            x_PD = block(x_PD, cos_PH, sin_PH, mask)
            hidden.append(x_PD)
        out_QO = self.merger(x_PD)
        valid_Q = jnp.asarray(aux["valid_P"]).reshape(-1, self.group)[:, 0]
        out_QO = jnp.where(valid_Q[:, None], out_QO, jnp.zeros((), out_QO.dtype))
        return (out_QO, tuple(hidden)) if output_hidden_states else out_QO
