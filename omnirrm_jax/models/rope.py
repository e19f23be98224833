"""TMRoPE position ids of the Qwen2.5-Omni thinker, on the host in numpy (it runs inside the data pipeline).

A port of transformers' `get_rope_index` (Qwen2_5OmniPreTrainedModelForConditionalGeneration), bit-identical
to it, plus the two things the rest of the pipeline needs from the same rules: positions for cached decoding and
the placeholder layout of audio-in-video, which must follow the very same chunk scan as the positions.

Rules that are easy to get subtly wrong (each is what HF does, not what would look natural):
- The next block starts at max(*last emitted block*) + 1, not at the running global max. The two differ after
  audio-in-video when the last chunk is audio and the video reached further (its h/w or t ids): the eos tokens
  then sit *below* earlier video ids. rope_delta, however, uses the global max.
- Video temporal ids are trunc(float32(float32(t * second_per_grid) * 25)); images use t * 25.
- Audio-in-video chunks come from a sequential scan (`_chunk_bounds`) that advances one chunk per token, so a
  large temporal jump yields a run of 1-token chunks; V_j and A_j are paired by chunk *index*, not by time.
- Without any image/video grid HF takes the plain path cumsum(mask) - 1 (audio-only included); padding gets
  position 1 on every path, and the plain-path delta counts that 1 in its max.
"""

from __future__ import annotations

import numpy as np

from omnirrm_jax.models.config import ThinkerConfig


def audio_token_count(mel_frames):
    """Audio tokens the encoder emits for L mel frames (conv stride 2, then pair pooling)."""
    return ((np.asarray(mel_frames) - 1) // 2 + 1 - 2) // 2 + 1


def _t_index(grid_t: int, second_per_grid: float, cfg: ThinkerConfig) -> np.ndarray:
    """Temporal ids of a vision item relative to its anchor: float32 product truncated like torch `.long()`."""
    t = np.arange(int(grid_t), dtype=np.float32) * np.float32(second_per_grid)
    return (t * np.float32(cfg.position_id_per_seconds)).astype(np.int64)


def _vision_ids(thw, second_per_grid: float, cfg: ThinkerConfig) -> np.ndarray:
    """(3, t*h'*w') relative (temporal, row, col) ids of merged vision tokens in raster order (t, row, col)."""
    m = cfg.vision.spatial_merge_size
    t_idx = _t_index(thw[0], second_per_grid, cfg)
    hm, wm = int(thw[1]) // m, int(thw[2]) // m
    shape = (len(t_idx), hm, wm)
    return np.stack([np.broadcast_to(t_idx[:, None, None], shape).ravel(),
                     np.broadcast_to(np.arange(hm)[None, :, None], shape).ravel(),
                     np.broadcast_to(np.arange(wm)[None, None, :], shape).ravel()])


def _chunk_bounds(rel: np.ndarray, per_chunk: int) -> list[int]:
    """Exact port of HF `get_chunked_index` (model and processor share it): chunk cuts of a non-decreasing id list.

    HF walks the tokens and cuts before token i when rel[i] >= k * per_chunk, then k += 1 (one step only, even if
    the ids jumped several chunks; a later token of the same frame can then cut again). Between cuts k is fixed,
    so the next cut is the first index after the previous cut with rel >= k * per_chunk: one searchsorted per chunk.
    Returns [0, cut_1, ..., n]; chunk j is rel[b[j]:b[j+1]] (an empty list still gives one empty chunk, as in HF).
    """
    bounds, k, lo, n = [0], 1, 0, len(rel)
    while True:
        i = max(lo, int(np.searchsorted(rel, k * per_chunk, side="left")))
        if i >= n:
            break
        bounds.append(i)
        k, lo = k + 1, i + 1
    bounds.append(n)
    return bounds


def _audio_in_video(thw, second_per_grid: float, n_audio: int, cfg: ThinkerConfig) -> list[tuple[str, np.ndarray]]:
    """('video'|'audio', relative (3, m) ids) blocks of one audio-in-video item in sequence order V0, A0, V1, A1, ...
    (then the leftover chunks of the longer stream). Ids are relative to the anchor (bos position + 1). Shared by
    `get_rope_index` and `audio_in_video_layout`, so the token layout and the positions cannot disagree."""
    video = _vision_ids(thw, second_per_grid, cfg)
    audio = np.broadcast_to(np.arange(int(n_audio), dtype=np.int64), (3, int(n_audio)))
    per_chunk = int(cfg.position_id_per_seconds * cfg.seconds_per_chunk)
    vb, ab = _chunk_bounds(video[0], per_chunk), _chunk_bounds(audio[0], per_chunk)
    blocks = []
    for j in range(max(len(vb), len(ab)) - 1):
        if j + 1 < len(vb):
            blocks.append(("video", video[:, vb[j]:vb[j + 1]]))
        if j + 1 < len(ab):
            blocks.append(("audio", audio[:, ab[j]:ab[j + 1]]))
    return blocks


def audio_in_video_layout(video_thw, second_per_grid: float, n_audio_tokens: int,
                          cfg: ThinkerConfig) -> list[tuple[str, int]]:
    """Placeholder runs between `<|audio_bos|>` and `<|audio_eos|>` for a video with its own audio:
    [('video', n), ('audio', n), ...] in exactly the order `get_rope_index` assigns positions (empty runs dropped;
    the HF processor emits them as empty strings). The whole item is
    `<|vision_bos|><|audio_bos|>` + runs + `<|audio_eos|><|vision_eos|>`."""
    return [(kind, b.shape[1]) for kind, b in _audio_in_video(video_thw, second_per_grid, n_audio_tokens, cfg)
            if b.shape[1]]


class _Row:
    """Writes one unpadded row's ids block by block; `nxt` is HF's `llm_pos_ids_list[-1].max() + 1`."""

    def __init__(self, n: int):
        self.ids, self.st, self.last = np.empty((3, n), np.int64), 0, -1

    @property
    def nxt(self) -> int:
        return self.last + 1

    def put(self, block) -> None:
        block = np.asarray(block, np.int64)
        m = block.shape[-1]
        if self.st + m > self.ids.shape[1]:
            raise ValueError("placeholder tokens do not match the grids / audio lengths (sequence too short)")
        self.ids[:, self.st:self.st + m] = block
        self.st += m
        if m:
            self.last = int(block.max())

    def text(self, n: int) -> None:
        self.put(np.arange(n) + self.nxt)


def get_rope_index(input_ids, attention_mask=None, *, cfg: ThinkerConfig, image_grid_thw=None, video_grid_thw=None,
                   second_per_grids=None, audio_seqlens=None, use_audio_in_video: bool = False):
    """(position_ids (3, B, S) int64, rope_deltas (B, 1) int64), bit-identical to HF `get_rope_index`.

    audio_seqlens are mel-frame lengths (HF passes feature_attention_mask.sum(-1)); images, videos and audios
    are consumed in order across the whole batch. rope_delta = max(ids) + 1 - n_unpadded (may be negative).
    """
    ids = np.asarray(input_ids)
    B, S = ids.shape
    if image_grid_thw is None and video_grid_thw is None:  # HF's plain path (text-only and audio-only)
        m = np.ones((B, S), np.int64) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
        pos = np.cumsum(m, -1) - 1
        pos[m == 0] = 1
        deltas = pos.max(-1, keepdims=True) + 1 - m.sum(-1, keepdims=True)
        return np.broadcast_to(pos, (3, B, S)).copy(), deltas.astype(np.int64)

    mask = np.ones((B, S), bool) if attention_mask is None else np.asarray(attention_mask) == 1
    images = None if image_grid_thw is None else np.asarray(image_grid_thw, np.int64)
    videos = None if video_grid_thw is None else np.asarray(video_grid_thw, np.int64)
    spg = None if second_per_grids is None else np.asarray(second_per_grids, np.float32).reshape(-1)
    alen = None if audio_seqlens is None else audio_token_count(np.asarray(audio_seqlens, np.int64).reshape(-1))
    if videos is not None and spg is None:
        raise ValueError("video_grid_thw needs second_per_grids (the HF processor gives temporal_patch_size / fps)")
    c = cfg
    m2 = c.vision.spatial_merge_size ** 2
    position_ids = np.ones((3, B, S), np.int64)
    deltas = np.zeros((B, 1), np.int64)
    idx = {"image": 0, "video": 0, "audio": 0}  # global counters over the batch, as in HF
    for b in range(B):
        row = ids[b][mask[b]]
        n = len(row)
        if n == 0:  # HF fails on an all-padding row; keep padding ids and a zero delta
            continue
        vs = np.flatnonzero(row[:-1] == c.vision_start_token_id)
        after = row[vs + 1]
        remain = {"image": int(np.sum(after == c.image_token_id)),
                  "video": int(np.sum(after == (c.audio_start_token_id if use_audio_in_video else c.video_token_id))),
                  "audio": int(np.sum(row == c.audio_start_token_id))}
        where = {"audio": np.flatnonzero(row == c.audio_token_id), "image": np.flatnonzero(row == c.image_token_id),
                 "video": np.flatnonzero(row == c.video_token_id)}
        r = _Row(n)
        items = remain["image"] + remain["audio"] + (0 if use_audio_in_video else remain["video"])
        for _ in range(items):
            ed = {}
            for kind in ("audio", "image", "video"):  # HF's tie order; ties cannot happen for distinct ids
                if remain[kind] > 0 and len(where[kind]):
                    j = np.searchsorted(where[kind], r.st)
                    if j == len(where[kind]):
                        raise ValueError(f"no {kind} placeholder left after token {r.st} in row {b}")
                    ed[kind] = int(where[kind][j])
            if not ed:
                raise ValueError(f"row {b}: more bos tokens than {{audio,image,video}} placeholders")
            kind = min(ed, key=ed.get)
            if kind == "video" and use_audio_in_video:
                r.text(ed[kind] - r.st - 1)  # text + <|vision_bos|>, then <|audio_bos|> at the same id
                r.put([[r.last]] * 3)
                blocks = _audio_in_video(videos[idx["video"]], spg[idx["video"]], alen[idx["audio"]], c)
                anchor = r.nxt
                for _, block in blocks:
                    r.put(block + anchor)
                r.put([[r.nxt] * 2] * 3)  # <|audio_eos|><|vision_eos|> share last-chunk max + 1
                idx["video"] += 1
                idx["audio"] += 1
                remain["video"] -= 1
                remain["audio"] -= 1
                continue
            r.text(ed[kind] - r.st)  # text + bos
            if kind == "audio":
                r.text(int(alen[idx["audio"]]))
            else:
                grids = images if kind == "image" else videos
                thw = grids[idx[kind]]
                scale = 1.0 if kind == "image" else spg[idx[kind]]
                ids3 = _vision_ids(thw, scale, c)
                if ids3.shape[1] != int(np.prod(thw)) // m2:
                    raise ValueError(f"{kind} grid {thw.tolist()} is not divisible by the merge size")
                r.put(ids3 + r.nxt)
            r.text(1)  # eos
            idx[kind] += 1
            remain[kind] -= 1
        r.text(n - r.st)
        position_ids[:, b, mask[b]] = r.ids
        deltas[b, 0] = r.ids.max() + 1 - n
    return position_ids, deltas


def decode_positions(rope_deltas, start, num_tokens: int) -> np.ndarray:
    """(3, B, T) ids of T new tokens under a KV cache: text position + rope_delta on all three axes.

    `start` is the text position of the first new token: the cache length for unpadded rows, or per row the
    number of real tokens so far (attention_mask.sum(-1)) for left-padded batches; this is HF's
    `compute_3d_position_ids` cached branch and gives max(prompt ids) + 1 + k. NB transformers 5 `generate`
    instead passes explicit ids, last prompt id + 1 + k (`continue_positions`); the two differ whenever the last
    prompt token is not the maximum, e.g. a prompt ending shortly after an audio-in-video block (module docstring).
    """
    d = np.asarray(rope_deltas, np.int64).reshape(-1, 1)
    s = np.asarray(start, np.int64).reshape(-1, 1)
    pos = s + np.arange(int(num_tokens)) + d
    return np.broadcast_to(pos, (3,) + pos.shape).copy()


def continue_positions(position_ids, num_tokens: int, attention_mask=None) -> np.ndarray:
    """(3, B, T) ids of T tokens appended after a prompt: each axis continues from the last real prompt token,
    + 1 per step. This is what transformers 5 `generate` feeds the thinker, and what `get_rope_index` gives text
    that follows the prompt, so teacher-forced scoring of a full sequence and cached decoding agree."""
    pos = np.asarray(position_ids, np.int64)
    if attention_mask is None:
        last = pos[:, :, -1]
    else:
        m = np.asarray(attention_mask) == 1
        j = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        last = pos[:, np.arange(pos.shape[1]), j]
    return last[:, :, None] + 1 + np.arange(int(num_tokens))
