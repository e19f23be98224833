"""The Qwen2.5-Omni thinker: the only module that knows all modalities.

Two layers of API:
  * `prepare_inputs(cfg, input_ids, ...)` (host, numpy): everything that depends on grid sizes, audio
    lengths and token layout — TMRoPE ids, vision/audio index tables — becomes plain arrays, so
  * `Thinker.forward(inputs)` is a pure, jittable function of arrays (static shapes once padded).
`Thinker.__call__` chains both with the argument names of HF
`Qwen2_5OmniThinkerForConditionalGeneration.forward`, so anyone who knows the HF model can use ours.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.models import audio as audio_lib
from omnirrm_jax.models import head as head_lib
from omnirrm_jax.models import layers as L
from omnirrm_jax.models import rope as rope_lib
from omnirrm_jax.models import text as text_lib
from omnirrm_jax.models import vision as vision_lib
from omnirrm_jax.models.config import ThinkerConfig

Inputs = dict[str, Any]  # arrays only; optional keys per modality


# The keys of a batch the thinker's forward reads; a data batch also carries bookkeeping (labels, masks, gold),
# which must not reach a jitted forward (a new key would change the program).
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "rope_deltas", "pixel_values", "image_aux",
              "pixel_values_videos", "video_aux", "audio_chunks", "audio_aux", "segment_ids",
              "segment_lengths")


def model_inputs(batch: dict) -> dict:
    """The model's inputs of a pipeline batch (`MODEL_KEYS` present in it)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def _np(x, dtype=None):
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor handed over by an HF user
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_count(name: str, token_id: int, input_ids: np.ndarray, expected: int) -> None:
    found = int((input_ids == token_id).sum())
    if found != expected:
        raise ValueError(f"{name}: input_ids hold {found} placeholder tokens (id {token_id}) but the "
                         f"{name} inputs give {expected} features; the counts must match exactly")


def prepare_inputs(cfg: ThinkerConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                   pixel_values_videos=None, video_grid_thw=None, video_second_per_grid=None,
                   input_features=None, feature_attention_mask=None, use_audio_in_video: bool = False) -> Inputs:
    """Host-side preparation of one batch (HF argument names and layouts).

    Returns a dict of numpy arrays: input_ids, attention_mask, position_ids (3,B,S), rope_deltas (B,1),
    and per present modality its tower input plus `*_aux` index tables.
    """
    ids = _np(input_ids, np.int32)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else _np(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    out: Inputs = {"input_ids": ids, "attention_mask": mask}
    m = cfg.vision.spatial_merge_size ** 2
    image_grid = _np(image_grid_thw, np.int64)
    video_grid = _np(video_grid_thw, np.int64)
    if pixel_values is not None:
        _check_count("image", cfg.image_token_id, ids, int(image_grid.prod(-1).sum()) // m)
        out["pixel_values"] = _np(pixel_values, np.float32)
        out["image_aux"] = vision_lib.vision_aux(image_grid, cfg.vision)
    if pixel_values_videos is not None:
        _check_count("video", cfg.video_token_id, ids, int(video_grid.prod(-1).sum()) // m)
        out["pixel_values_videos"] = _np(pixel_values_videos, np.float32)
        out["video_aux"] = vision_lib.vision_aux(video_grid, cfg.vision)
    audio_lens = None
    if input_features is not None:
        feats = _np(input_features, np.float32)
        fmask = (np.ones(feats.shape[::2], np.int32) if feature_attention_mask is None
                 else _np(feature_attention_mask, np.int32))
        audio_lens = fmask.sum(-1)
        _check_count("audio", cfg.audio_token_id, ids, int(sum(audio_lib.audio_token_count(int(n))
                                                                for n in audio_lens)))
        out["audio_chunks"], out["audio_aux"] = audio_lib.prepare_audio(feats, fmask, cfg.audio)
    seconds = None if video_second_per_grid is None else _np(video_second_per_grid, np.float64)
    out["position_ids"], out["rope_deltas"] = rope_lib.get_rope_index(
        ids, mask, cfg=cfg, image_grid_thw=image_grid, video_grid_thw=video_grid, second_per_grids=seconds,
        audio_seqlens=audio_lens, use_audio_in_video=use_audio_in_video)
    return out


def _scatter(embeds_BTD: jax.Array, ids_BT: jax.Array, token_id: int, feats_ND: jax.Array) -> jax.Array:
    """HF masked_scatter: the k-th placeholder (row-major over the batch) takes feature row k."""
    is_tok = ids_BT == token_id
    idx = jnp.cumsum(is_tok.reshape(-1)).reshape(ids_BT.shape) - 1
    rows = jnp.take(feats_ND.astype(embeds_BTD.dtype), jnp.clip(idx, 0, feats_ND.shape[0] - 1), axis=0)
    return jnp.where(is_tok[..., None], rows, embeds_BTD)


class Thinker(nnx.Module):
    """Checkpoint names: `model.*` (text), `lm_head`, `visual.*`, `audio_tower.*`."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.model = text_lib.TextModel(cfg, rngs=rngs)
        self.visual = vision_lib.VisionEncoder(cfg, rngs=rngs)
        self.audio_tower = audio_lib.AudioEncoder(cfg, rngs=rngs)
        t = cfg.text
        self.lm_head = None if t.tie_word_embeddings else L.Linear(
            t.hidden_size, t.vocab_size, use_bias=False, axes=(L.EMBED, L.VOCAB), dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs)

    # -- pieces ------------------------------------------------------------------------------------
    def embed(self, inputs: Inputs) -> jax.Array:
        """Token embeddings with the tower outputs merged in (audio, then image, then video, as HF)."""
        ids = jnp.asarray(inputs["input_ids"])
        x = self.model.embed_tokens(ids)
        c = self.config
        if "audio_chunks" in inputs:
            x = _scatter(x, ids, c.audio_token_id, self.audio_tower(inputs["audio_chunks"], inputs["audio_aux"]))
        if "pixel_values" in inputs:
            x = _scatter(x, ids, c.image_token_id, self.visual(inputs["pixel_values"], inputs["image_aux"]))
        if "pixel_values_videos" in inputs:
            x = _scatter(x, ids, c.video_token_id,
                         self.visual(inputs["pixel_values_videos"], inputs["video_aux"]))
        return x

    def logits(self, hidden_BTD: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return self.model.embed_tokens.attend(hidden_BTD)
        return self.lm_head(hidden_BTD)

    def output_weight(self) -> jax.Array | None:
        """The output head as one (D, V) matrix in the compute dtype, when `logits` is exactly `h @ it` (a tied
        table, or an untied head without bias or LoRA); None otherwise. Losses use it to fuse the head with
        the log-softmax and its gradient (`models.head.linear_token_logprobs`)."""
        if self.lm_head is None:
            return L.weight(self.model.embed_tokens.embedding, self.model.embed_tokens.dtype).T
        head = self.lm_head
        if head.bias is not None or head.lora_a is not None:
            return None
        return L.weight(head.kernel, head.dtype)

    def token_logprobs(self, hidden_BTD: jax.Array, targets_BT: jax.Array, *, chunk: int = 1024,
                       temperature: float = 1.0) -> jax.Array:
        """log softmax(logits / temperature)[target] at every position of `hidden_BTD` (final-norm hidden states),
        computed `chunk` positions at a time (fp32 logits of one chunk alive at once), fused with its gradient
        where the head is one matrix (`models.head`). `temperature` must be a Python number."""
        return head_lib.head_token_logprobs(hidden_BTD, targets_BT, self, chunk=chunk, temperature=temperature)

    def forward(self, inputs: Inputs, cache: text_lib.DecodeCache | None = None, cache_index=None,
                return_hidden: bool = False):
        """Jittable forward over prepared inputs.

        Returns logits (B,S,V) — with a cache, also the updated cache: (logits, cache). With
        `return_hidden`, the final-norm hidden states are returned instead of logits (losses that
        only need a few positions avoid materialising (B,S,V)).

        Packed rows (training only) carry `segment_ids` (B,S): 1..k the examples of a row, 0 padding, and
        `segment_lengths` (B,M); tokens attend within their segment and `position_ids` restart per segment
        (`data.packing`). Media of a packed batch are concatenated in row order, as for unpacked batches, so the
        placeholder scatter is unchanged.
        """
        x = self.embed(inputs)
        segments, lengths = inputs.get("segment_ids"), inputs.get("segment_lengths")
        hidden, cache, _ = self.model(x, jnp.asarray(inputs["position_ids"]), jnp.asarray(inputs["attention_mask"]),
                                      cache=cache, cache_index=cache_index,
                                      segment_ids_BT=None if segments is None else jnp.asarray(segments),
                                      segment_lengths_BM=None if lengths is None else jnp.asarray(lengths))
        out = hidden if return_hidden else self.logits(hidden)
        return out if cache is None else (out, cache)

    def decode_step(self, token_ids_BT: jax.Array, positions_3BT: jax.Array, cache: text_lib.DecodeCache,
                    cache_index) -> tuple[jax.Array, text_lib.DecodeCache]:
        """One cached step over new text tokens (no media): (logits (B,T,V), cache)."""
        x = self.model.embed_tokens(token_ids_BT)
        hidden, cache, _ = self.model(x, positions_3BT, cache=cache, cache_index=cache_index)
        return self.logits(hidden), cache

    # -- HF-style entry point ----------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                 pixel_values_videos=None, video_grid_thw=None, video_second_per_grid=None,
                 input_features=None, feature_attention_mask=None, use_audio_in_video: bool = False) -> jax.Array:
        """Logits (B, S, V) for an HF-style batch (same argument names and layouts as transformers)."""
        inputs = prepare_inputs(self.config, input_ids, attention_mask, pixel_values, image_grid_thw,
                                pixel_values_videos, video_grid_thw, video_second_per_grid, input_features,
                                feature_attention_mask, use_audio_in_video)
        return self.forward(inputs)
