"""One decoded record -> one training example, and examples -> one padded host batch (numpy only, no JAX).

Why a separate module: these functions run in Grain worker processes (spawned, so every import is paid per worker
and JAX must stay out), and they are where the model's input contract is met: the prompt is what ms-swift feeds
the thinker, placeholders are expanded exactly as the HF processor does, and TMRoPE ids are computed per example
on the unpadded ids (`get_rope_index` is per row; padding gets id 1 as in HF), so a left-padded bucketed batch gives
every real token the same ids, media rows and logits as the unpadded example alone.

The prompt, as ms-swift's `qwen2_5_omni` template builds it (swift/llm/template: `_add_default_tags`,
`Qwen2_5OmniTemplate.replace_tag`, ChatML with the default system "You are a helpful assistant."): missing
`<image>`/`<audio>`/`<video>` tags are prepended to the first non-system message (no separator), each tag becomes
its wrapped placeholder, and the chat is rendered with the stock template. SFT appends the assistant judgement and
ms-swift's suffix `<|im_end|>` (no trailing newline); the loss covers exactly those tokens. GRPO stops at the
generation prompt `<|im_start|>assistant\\n`.

Where the template ends and data begins: the tags in the prompt messages of a row are the template's (ms-swift
semantics) and become media items (`swift_items`); everything else, and a message given as chat items (the judge
prompt of `eval.pairs`, whose answers may say "<image>"), is text, encoded with special-token parsing off
(`tokenizer.encode_chat`), as is the SFT judgement. A row can therefore never spell a control token.

Media of a batch are concatenated in row order, which is the order the thinker's masked scatter reads placeholders.
`finalize` (main process) adds the towers' index tables with the towers' own host functions; it is the only place
here that imports model code, and it imports it lazily.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from omnirrm_jax.data import records as R
from omnirrm_jax.data.tokenizer import (SPECIAL_TOKENS, Tokenizer, encode_chat, expand_placeholders, item_kind,
                                        render_chat_parts, thinker_token_ids)
from omnirrm_jax.models.config import ThinkerConfig
from omnirrm_jax.models.rope import audio_token_count, get_rope_index
from omnirrm_jax.rubric.vocab import MODALITY_CODES, VERDICT_CODES  # noqa: F401 - E.MODALITY_CODES

_TAG_ORDER = ("image", "audio", "video")  # ms-swift prepends in this order (so video tags end up first)
_TAG_RE = re.compile(r"<(image|audio|video)>")
_AUDIO_ORDER = (SPECIAL_TOKENS["audio"], SPECIAL_TOKENS["video"])
MEDIA_KEYS = ("pixel_values", "image_aux", "pixel_values_videos", "video_aux", "audio_chunks", "audio_aux")


class Skip(Exception):
    """A record the pipeline drops and counts: `reason` is a short code (a key of the skip counts)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """Index of the smallest bucket >= n (buckets ascending); -1 if none fits."""
    for i, b in enumerate(buckets):
        if n <= b:
            return i
    return -1


def media_bucket_for(cost: Sequence[int], media_buckets: Sequence[Sequence[int]]) -> int:
    """Index of the first (image patches, video patches, audio chunks, audio tokens) budget that holds `cost`."""
    for i, b in enumerate(media_buckets):
        if all(c <= lim for c, lim in zip(cost, b)):
            return i
    return -1


def prompt_and_target(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(prompt messages, the final assistant message's text or None): a trailing assistant message is the SFT
    target (GRPO drops it); it is data text, so its tags are never media tags."""
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def swift_items(content: str) -> list[dict]:
    """An ms-swift message string -> chat items: each `<image>`/`<audio>`/`<video>` tag a media item, the text
    between them text items (ms-swift reads tags only in the row's own message strings)."""
    parts = _TAG_RE.split(content)  # [text, kind, text, kind, ..., text]
    return [{"type": p} if i % 2 else {"type": "text", "text": p} for i, p in enumerate(parts) if i % 2 or p]


def swift_prompt_messages(messages: list[dict], n_media: dict[str, int], system: str | None) -> list[dict]:
    """ms-swift's tag handling, as chat items: message strings' tags become media items (`swift_items`), missing
    media are prepended to the first non-system message. A message whose content is already an item list keeps
    it: its text items are data and are not read for tags."""
    msgs = [{"role": m["role"], "content": swift_items(m["content"]) if isinstance(m["content"], str)
             else list(m["content"])} for m in messages]
    if system is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": swift_items(system)})
    first = next((i for i, m in enumerate(msgs) if m["role"] != "system"), None)
    if first is None:
        raise Skip("bad_row", f"no user message: the prompt is {len(msgs)} system message(s) only")
    kinds = [item_kind(item) for m in msgs for item in m["content"]]
    for kind in _TAG_ORDER:
        missing = n_media[kind] - kinds.count(kind)
        if missing < 0:
            raise Skip("token_mismatch", f"{kinds.count(kind)} <{kind}> tags but {n_media[kind]} {kind}s")
        msgs[first]["content"] = [{"type": kind} for _ in range(missing)] + msgs[first]["content"]
    return msgs


def _check_ids(tok: Tokenizer, cfg: ThinkerConfig) -> None:
    want = {k: getattr(cfg, k) for k in thinker_token_ids(tok)}
    if thinker_token_ids(tok) != want:
        raise ValueError(f"tokenizer special ids {thinker_token_ids(tok)} differ from the config's {want}; build the "
                         "config with dataclasses.replace(cfg, **thinker_token_ids(tok))")


def build_example(rec: dict, index: int, tok: Tokenizer, cfg: ThinkerConfig, *, mode: str, max_length: int,
                  max_media: Sequence[int], system: str | None = None,
                  max_target_length: int | None = None) -> dict[str, Any]:
    """One decoded record -> one example (unpadded numpy arrays); raises `Skip` for records to drop.

    Args:
      rec: `records.decode_record` output. index: its global position in the source (kept as example_index).
      mode: "sft" (prompt + judgement, loss mask on the judgement) or "grpo" (prompt only, gold labels).
      max_length: longer examples are skipped as "too_long" (ms-swift's default truncation_strategy "delete").
      max_media: the largest (image patches, video patches, audio chunks, audio tokens) budget of a batch.
      system: an optional system prompt (the reference GRPO run passed one); SFT used the template default.
      max_target_length: SFT judgements (with the end token) longer than this are skipped as "target_too_long".
    Returns:
      {"index", "modality", "input_ids" (n,) int32, "position_ids" (3, n) int32, "rope_delta", "loss_mask" (n,)
       int32 | None, "gold" (better, score_A, score_B) | None, "pixel_values" (P, 1176) f32 | None, "image_grid"
       (k, 3), "pixel_values_videos" | None, "video_grid", "audio_features" (128, L) f32 | None, "audio_lens" (a,),
       "cost" (n tokens, image patches, video patches, audio chunks, audio tokens)}.
    """
    prompt_msgs, response = prompt_and_target(rec["messages"])
    if mode == "sft" and response is None:
        raise Skip("no_response", "SFT needs a final assistant message (the gold judgement)")
    if mode != "sft" and rec["gold"] is None:
        raise Skip("no_gold", "GRPO needs gold better/score_A/score_B")
    aiv = rec["use_audio_in_video"]
    images, videos = rec["images"], rec["videos"]
    parts = render_chat_parts(swift_prompt_messages(prompt_msgs, {"image": len(images), "video": len(videos),
                                                                  "audio": len(rec["audios"])}, system))
    # Audio features in the order their tokens appear (standalone audios and, with audio-in-video, each video's).
    audios, a_iter, v_iter = [], iter(rec["audios"]), iter(videos)
    for placeholder in (p for p, control in parts if control and p in _AUDIO_ORDER):
        if placeholder == "<|AUDIO|>" or aiv:
            item = next(a_iter, None) if placeholder == "<|AUDIO|>" else next(v_iter, {"audio": None})["audio"]
            if item is None:
                raise Skip("token_mismatch", f"more {placeholder} placeholders in the prompt than audio inputs")
            audios.append(item)
    image_grid = np.array([im["grid_thw"] for im in images], np.int64).reshape(-1, 3)
    video_grid = np.array([v["grid_thw"] for v in videos], np.int64).reshape(-1, 3)
    spg = np.array([v["second_per_grid"] for v in videos], np.float64)
    audio_lens = np.array([a["length"] for a in audios], np.int64)
    try:
        ids = expand_placeholders(encode_chat(tok, parts), image_grid_thw=image_grid, video_grid_thw=video_grid,
                                  audio_lengths=audio_lens, video_second_per_grid=spg if aiv else None,
                                  use_audio_in_video=aiv, cfg=cfg)
    except ValueError as e:
        raise Skip("token_mismatch", str(e)) from None
    n_prompt = len(ids)
    if mode == "sft":
        ids = np.concatenate([ids, tok.encode_text(response), [tok.special_ids["im_end"]]]).astype(np.int64)
    n = len(ids)
    if n > max_length:
        raise Skip("too_long", f"{n} tokens > max_length {max_length}")
    if mode == "sft" and max_target_length is not None and n - n_prompt > max_target_length:
        raise Skip("target_too_long", f"{n - n_prompt} judgement tokens > max_target_length {max_target_length}")
    chunk = 2 * cfg.audio.n_window
    cost = (n, int(image_grid.prod(-1).sum()), int(video_grid.prod(-1).sum()),
            int(sum(-(-int(L) // chunk) for L in audio_lens)), int(audio_token_count(audio_lens).sum()))
    if any(c > lim for c, lim in zip(cost[1:], max_media)):
        raise Skip("media_too_large", f"(image patches, video patches, audio chunks, audio tokens) {cost[1:]} exceed "
                                      f"the largest media bucket {tuple(max_media)}")
    try:
        pos, delta = get_rope_index(ids[None], cfg=cfg, image_grid_thw=image_grid if len(image_grid) else None,
                                    video_grid_thw=video_grid if len(video_grid) else None,
                                    second_per_grids=spg if len(spg) else None,
                                    audio_seqlens=audio_lens if len(audio_lens) else None, use_audio_in_video=aiv)
    except ValueError as e:
        raise Skip("token_mismatch", str(e)) from None
    ex = {"index": int(index), "modality": MODALITY_CODES[rec["modality"]], "input_ids": ids.astype(np.int32),
          "position_ids": pos[:, 0].astype(np.int32), "rope_delta": int(delta[0, 0]), "cost": cost,
          "loss_mask": None, "gold": None, "image_grid": image_grid, "video_grid": video_grid, "audio_lens": audio_lens,
          "pixel_values": np.concatenate([R.frames_to_patches(np.repeat(im["frames"], R.TEMPORAL, 0))
                                          for im in images]) if images else None,
          "pixel_values_videos": np.concatenate([R.frames_to_patches(v["frames"]) for v in videos]) if videos else None,
          "audio_features": np.concatenate([a["features"] for a in audios], 1) if audios else None}
    if mode == "sft":
        ex["loss_mask"] = (np.arange(n) >= n_prompt).astype(np.int32)
    else:
        g = rec["gold"]  # the reference reward plugin int()s the scores
        ex["gold"] = (VERDICT_CODES[g["better"]], int(g["score_A"]), int(g["score_B"]))
    return ex


def collate(examples: Sequence[dict], *, batch_size: int, seq_len: int, media: Sequence[int], pad_id: int,
            mode: str, patch_dim: int, n_mels: int = R.N_MELS, alloc=np.zeros) -> dict[str, Any]:
    """Examples -> a left-padded (batch_size, seq_len) batch; rows past len(examples) are padding (valid False).

    Pixels are written in row order into zeroed (bucket, patch_dim) arrays from `alloc(shape, dtype)` (a Grain
    worker passes shared memory, so the padding is never copied between processes); the grids and audio features
    ride along under "_"-keys for `finalize`, which builds the towers' index tables and audio chunks.
    """
    B, S = batch_size, seq_len
    if len(examples) > B:
        raise ValueError(f"{len(examples)} examples for a batch of {B}")
    out: dict[str, Any] = {"input_ids": np.full((B, S), pad_id, np.int32), "attention_mask": np.zeros((B, S), np.int32),
                           "position_ids": np.ones((3, B, S), np.int32), "rope_deltas": np.zeros((B, 1), np.int32),
                           "example_index": np.full((B,), -1, np.int64), "modality": np.full((B,), -1, np.int32),
                           "valid": np.arange(B) < len(examples)}
    if mode == "sft":
        out["loss_mask"] = np.zeros((B, S), np.int32)
    else:
        for k in ("gold_better", "gold_score_A", "gold_score_B"):
            out[k] = np.zeros((B,), np.int32)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        out["input_ids"][i, S - n:] = ex["input_ids"]
        out["attention_mask"][i, S - n:] = 1
        out["position_ids"][:, i, S - n:] = ex["position_ids"]
        out["rope_deltas"][i, 0] = ex["rope_delta"]
        out["example_index"][i], out["modality"][i] = ex["index"], ex["modality"]
        if mode == "sft":
            out["loss_mask"][i, S - n:] = ex["loss_mask"]
        else:
            out["gold_better"][i], out["gold_score_A"][i], out["gold_score_B"][i] = ex["gold"]
    out.update(collate_media(examples, media=media, patch_dim=patch_dim, n_mels=n_mels, alloc=alloc))
    return out


def collate_media(examples: Sequence[dict], *, media: Sequence[int], patch_dim: int, n_mels: int = R.N_MELS,
                  alloc=np.zeros) -> dict[str, Any]:
    """The media of `examples`, concatenated in their order (the order the thinker's scatter reads placeholders)
    into arrays of the bucket `media`; grids and audio ride along under "_"-keys for `finalize`."""
    out: dict[str, Any] = {}
    for key, n in (("pixel_values", media[0]), ("pixel_values_videos", media[1])):
        out[key], row = alloc((n, patch_dim), np.float32), 0
        for x in (ex[key] for ex in examples if ex[key] is not None):
            out[key][row:row + len(x)] = x
            row += len(x)
    out["_image_grid"] = np.concatenate([ex["image_grid"] for ex in examples] + [np.zeros((0, 3), np.int64)])
    out["_video_grid"] = np.concatenate([ex["video_grid"] for ex in examples] + [np.zeros((0, 3), np.int64)])
    feats = [ex["audio_features"] for ex in examples if ex["audio_features"] is not None]
    out["_audio_features"] = np.concatenate(feats, 1) if feats else np.zeros((n_mels, 0), np.float32)
    out["_audio_lens"] = np.concatenate([ex["audio_lens"] for ex in examples] + [np.zeros(0, np.int64)])
    out["_media"] = np.array(media, np.int64)
    return out


def finalize(pre: dict[str, Any], cfg: ThinkerConfig) -> dict[str, Any]:
    """Collated batch -> the host batch `Thinker.forward` takes: adds image_aux / video_aux (`vision_aux`) and
    audio_chunks / audio_aux (`prepare_audio`), padded to the batch's media bucket. Imports model code (JAX)."""
    from omnirrm_jax.models import audio as audio_lib
    from omnirrm_jax.models import vision as vision_lib

    out = {k: v for k, v in pre.items() if not k.startswith("_")}
    _, _, chunks, tokens = (int(v) for v in pre["_media"])
    out["image_aux"] = vision_lib.vision_aux(pre["_image_grid"], cfg.vision, pad_to=len(pre["pixel_values"]))
    out["video_aux"] = vision_lib.vision_aux(pre["_video_grid"], cfg.vision, pad_to=len(pre["pixel_values_videos"]))
    out["audio_chunks"], out["audio_aux"] = audio_lib.prepare_audio(
        pre["_audio_features"], None, cfg.audio, feature_lens=pre["_audio_lens"], pad_chunks_to=chunks,
        pad_tokens_to=tokens)
    return out


def batch_signature(batch: dict[str, Any]) -> tuple[int, ...]:
    """(seq_len, image patches, video patches, audio chunks, audio tokens) of a host batch."""
    return (batch["input_ids"].shape[1], len(batch["pixel_values"]), len(batch["pixel_values_videos"]),
            len(batch["audio_chunks"]), len(batch["audio_aux"]["token_mask"]))


def pad_batch(batch: dict[str, Any], signature: Sequence[int], pad_id: int) -> dict[str, Any]:
    """Grow a host batch to a larger `batch_signature` (more padding: before an unpacked row's tokens, after a
    packed row's segments; more padded patches/chunks/tokens), with
    the fill values the collator uses, so the real tokens see exactly the same inputs."""
    S, P_img, P_vid, C, U = (int(s) for s in signature)
    if any(a < b for a, b in zip(signature, batch_signature(batch))):
        raise ValueError(f"cannot shrink batch {batch_signature(batch)} to {tuple(signature)}")
    out, extra = dict(batch), S - batch["input_ids"].shape[1]
    fill = {"input_ids": pad_id, "attention_mask": 0, "loss_mask": 0, "position_ids": 1, "segment_ids": 0}
    packed = "segment_ids" in batch  # packed rows keep their padding at the end (`data.packing`); others at the start
    for k, v in fill.items():
        if k in batch:
            x = batch[k]
            out[k] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra) if packed else (extra, 0)], constant_values=v)
    if packed:  # per-segment columns, grown at the end
        for k in ("example_index", "modality"):
            out[k] = np.pad(batch[k], [(0, 0), (0, extra)], constant_values=-1)

    def grow(x, n, v=0):
        return np.pad(x, [(0, n - len(x))] + [(0, 0)] * (x.ndim - 1), constant_values=v)

    for px, aux, n in (("pixel_values", "image_aux", P_img), ("pixel_values_videos", "video_aux", P_vid)):
        out[px] = grow(batch[px], n)
        a = batch[aux]
        out[aux] = {"pos_P2": grow(a["pos_P2"], n), "window_P": grow(a["window_P"], n, -1),
                    "full_P": grow(a["full_P"], n, -1), "valid_P": grow(a["valid_P"], n, False)}
    a = batch["audio_aux"]
    out["audio_chunks"] = grow(batch["audio_chunks"], C)
    out["audio_aux"] = {"chunk_lens": grow(a["chunk_lens"], C), "pool_index": grow(a["pool_index"], U),
                        "token_mask": grow(a["token_mask"], U, False)}
    return out


def merge_media(parts: Sequence[dict[str, Any]], n_window: int) -> dict[str, Any]:
    """Media of several host batches (in global row order) -> the media of their concatenated batch.

    Real patches/chunks/tokens of every part come first, in order, then all the padding: the thinker's scatter
    hands the k-th placeholder of the (global) batch the k-th tower output row. Segment ids and audio pool indices
    are offset so items of different parts never share a segment or point into another part's chunks.
    """
    out: dict[str, Any] = {}
    for px, key in (("pixel_values", "image_aux"), ("pixel_values_videos", "video_aux")):
        total = sum(len(p[px]) for p in parts)
        rows, pos, win, full, w_off, f_off = [], [], [], [], 0, 0
        for p in parts:
            a = p[key]
            n = int(a["valid_P"].sum())
            rows.append(p[px][:n])
            pos.append(a["pos_P2"][:n])
            win.append(a["window_P"][:n] + w_off)
            full.append(a["full_P"][:n] + f_off)
            w_off += int(a["window_P"][:n].max(initial=-1)) + 1
            f_off += int(a["full_P"][:n].max(initial=-1)) + 1
        n = sum(len(r) for r in rows)
        pad = total - n
        out[px] = np.concatenate(rows + [np.zeros((pad,) + parts[0][px].shape[1:], parts[0][px].dtype)])
        out[key] = {"pos_P2": np.concatenate(pos + [np.zeros((pad, 2), np.int32)]),
                    "window_P": np.concatenate(win + [np.full((pad,), -1, np.int32)]),
                    "full_P": np.concatenate(full + [np.full((pad,), -1, np.int32)]),
                    "valid_P": np.arange(total) < n}
    C, U = sum(len(p["audio_chunks"]) for p in parts), sum(len(p["audio_aux"]["token_mask"]) for p in parts)
    chunks, lens, pools, c_off = [], [], [], 0
    for p in parts:
        a = p["audio_aux"]
        c, u = int((a["chunk_lens"] > 0).sum()), int(a["token_mask"].sum())
        chunks.append(p["audio_chunks"][:c])
        lens.append(a["chunk_lens"][:c])
        pools.append(a["pool_index"][:u] + c_off * n_window)
        c_off += c
    c, u = sum(len(x) for x in lens), sum(len(x) for x in pools)
    out["audio_chunks"] = np.concatenate(chunks + [np.zeros((C - c,) + parts[0]["audio_chunks"].shape[1:],
                                                            parts[0]["audio_chunks"].dtype)])
    out["audio_aux"] = {"chunk_lens": np.concatenate(lens + [np.zeros(C - c, np.int32)]),
                        "pool_index": np.concatenate(pools + [np.zeros((U - u, 2), np.int32)]).astype(np.int32),
                        "token_mask": np.arange(U) < u}
    return out
