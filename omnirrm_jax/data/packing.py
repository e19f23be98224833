"""Packed SFT batches: several examples per row, told apart by segment ids (numpy only, no JAX).

Why: SFT judgements are short next to the bucket lengths, so unpacked rows are mostly padding. Packing fills a
row of the largest sequence bucket with whole examples, first-fit from a buffer of examples; the thinker attends
causally *within* a segment (`Thinker.forward` with `segment_ids`) and every example keeps the positions
`build_example` computed for it alone (TMRoPE ids of media included), placed at its offset, so each example's
logits are those of the example run alone.

Layout of a packed host batch (B rows of S tokens; `collate_packed`):
  input_ids, attention_mask, loss_mask, segment_ids (1..k per row, 0 = padding, padding at the end of the row),
  segment_lengths (B, max_segments): the tokens of segments 1..k of each row, 0 past the last (GPU attention reads
  the rows as per-segment sequences from these, `models.layers.packed_runs`, instead of a (T, T) mask),
  position_ids (3, B, S) restarting at each segment, rope_deltas zeros (decoding never sees packed rows),
  example_index / modality (B, S): column j holds segment j+1's record index / modality code, -1 past the last,
  valid (B,): rows holding at least one example; and the media of every example concatenated in row-major order
  (row 0's examples in order, then row 1's, ...), the order the placeholders appear, padded to a media bucket.

Loss: `training.losses.masked_cross_entropy` is a token mean over every target token of the batch (sum of the
target log-probabilities / number of targets), so a packed batch gives exactly the loss of the same examples
unpacked in one batch. A segment's last token predicts the next segment's first token, a prompt token whose
loss_mask is 0, so no target ever crosses a boundary.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from omnirrm_jax.data import examples as E
from omnirrm_jax.data import records as R

# Examples per packed row. GPU attention treats each segment (and the row's padding) as its own sequence, and keeps
# softmax statistics per (segment slot, head, position) for the backward pass, so the slots are a static shape.
MAX_SEGMENTS = 16


def first_fit(lengths: Sequence[int], media_costs: Sequence[Sequence[int]], *, row_len: int, batch_size: int,
              max_media: Sequence[int], max_segments: int = MAX_SEGMENTS) -> list[list[list[int]]]:
    """Greedy first-fit of examples (in the given order) into rows of `row_len` tokens and at most `max_segments`
    examples, B rows per batch, a batch's media (image patches, video patches, audio chunks, audio tokens) within
    `max_media`.

    Each example goes to the first row, over all batches opened so far, with room for its tokens in a batch with
    room for its media; else to a new row of the first batch with a free row and room for its media; else to a new
    batch. Returns batches -> rows -> example positions (each position exactly once).
    """
    limit = np.asarray(max_media, np.int64)
    batches: list[dict] = []
    for i, (n, cost) in enumerate(zip(lengths, media_costs)):
        cost = np.asarray(cost, np.int64)
        if n > row_len or (cost > limit).any():
            raise ValueError(f"example {i} ({n} tokens, media {cost.tolist()}) cannot fit a row of {row_len} "
                             f"tokens / media {limit.tolist()}; the pipeline skips such examples before packing")
        placed = False
        for b in batches:
            if (b["media"] + cost > limit).any():
                continue
            for r, fill in enumerate(b["fill"]):
                if fill + n <= row_len and len(b["rows"][r]) < max_segments:
                    b["rows"][r].append(i)
                    b["fill"][r] += n
                    placed = True
                    break
            if placed:
                break
        if not placed:
            b = next((b for b in batches if len(b["rows"]) < batch_size and not (b["media"] + cost > limit).any()),
                     None)
            if b is None:
                b = {"rows": [], "fill": [], "media": np.zeros(len(limit), np.int64)}
                batches.append(b)
            b["rows"].append([i])
            b["fill"].append(n)
        b["media"] += cost
    return [b["rows"] for b in batches]


def collate_packed(rows: Sequence[Sequence[dict]], *, batch_size: int, seq_len: int, media: Sequence[int],
                   pad_id: int, patch_dim: int, n_mels: int = R.N_MELS, alloc=np.zeros,
                   max_segments: int = MAX_SEGMENTS) -> dict[str, Any]:
    """Rows of SFT examples (`build_example` outputs) -> a packed (batch_size, seq_len) host batch (module
    docstring); `finalize` then adds the towers' index tables exactly as for unpacked batches."""
    B, S = batch_size, seq_len
    if len(rows) > B:
        raise ValueError(f"{len(rows)} rows for a batch of {B}")
    if any(len(row) > max_segments for row in rows):
        raise ValueError(f"a row holds {max(len(row) for row in rows)} examples > max_segments {max_segments}")
    out: dict[str, Any] = {"input_ids": np.full((B, S), pad_id, np.int32), "attention_mask": np.zeros((B, S), np.int32),
                           "position_ids": np.ones((3, B, S), np.int32), "rope_deltas": np.zeros((B, 1), np.int32),
                           "example_index": np.full((B, S), -1, np.int64), "modality": np.full((B, S), -1, np.int32),
                           "valid": np.array([i < len(rows) and len(rows[i]) > 0 for i in range(B)]),
                           "loss_mask": np.zeros((B, S), np.int32), "segment_ids": np.zeros((B, S), np.int32),
                           "segment_lengths": np.zeros((B, max_segments), np.int32)}
    for i, row in enumerate(rows):
        at = 0
        for j, ex in enumerate(row):
            if ex["loss_mask"] is None:
                raise ValueError(f"record {ex['index']}: packing is for SFT examples (no loss mask here)")
            n = len(ex["input_ids"])
            if at + n > S:
                raise ValueError(f"row {i} holds {at + n} tokens > seq_len {S}")
            sl = slice(at, at + n)
            out["input_ids"][i, sl], out["attention_mask"][i, sl] = ex["input_ids"], 1
            out["position_ids"][:, i, sl] = ex["position_ids"]
            out["loss_mask"][i, sl], out["segment_ids"][i, sl] = ex["loss_mask"], j + 1
            out["example_index"][i, j], out["modality"][i, j] = ex["index"], ex["modality"]
            out["segment_lengths"][i, j] = n
            at += n
    out.update(E.collate_media([ex for row in rows for ex in row], media=media, patch_dim=patch_dim, n_mels=n_mels,
                               alloc=alloc))
    return out
