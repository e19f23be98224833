"""End-to-end logits parity with transformers' `Qwen2_5OmniThinkerForConditionalGeneration` over a small grid of
tiny random configs: tied and untied output heads, GQA ratios (kv heads = heads, heads / 2, 1), and media whose
merged vision grids are odd (3x5, 5x3, ...), ragged against the attention windows, and videos of more than one
temporal patch, in left-padded batches. Each case saves the re-randomised HF thinker with `save_pretrained` and
loads it through our loader (`params.load_hf`), so a tied head has no `lm_head.weight` in the file.

Tolerances as in test_thinker (not loosened here): positions equal, input embeddings within 1e-5, logits within
1e-4 of max |logit| (fp32, highest matmul precision).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flax import nnx

from omnirrm_jax.models import params as P
from omnirrm_jax.models import rope as R
from omnirrm_jax.models.audio import audio_token_count
from omnirrm_jax.models.thinker import prepare_inputs
from tests.hf_tiny import TINY_IDS, randomize_, tiny_hf_config, to_np
from tests.models.test_thinker import _audio_feats, _hf_forward, _left_pad, _text

IMG, VID, AUD = TINY_IDS["image_token_index"], TINY_IDS["video_token_index"], TINY_IDS["audio_token_index"]
ABOS, AEOS = TINY_IDS["audio_start_token_id"], TINY_IDS["audio_end_token_id"]
VBOS, VEOS = TINY_IDS["vision_start_token_id"], TINY_IDS["vision_end_token_id"]
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch (the tiny configs' patch 14)


@dataclasses.dataclass(frozen=True)
class Case:
    """One grid point. Rows are lists of items: ("text", n), ("image", (t, h, w)), ("video", (t, h, w), s/grid),
    ("audio", mel frames), ("video+audio", (t, h, w), s/grid, mel frames) (a video with its own audio)."""

    name: str
    tie: bool
    kv_heads: int  # of 4 query heads
    rows: tuple
    seed: int = 0


CASES = [
    # MHA, untied; an image of 6x10 patches (merged 3x5: odd both ways, two windows of 4 merged units across)
    Case("untied-mha-image3x5", tie=False, kv_heads=4, seed=11,
         rows=((("text", 4), ("image", (1, 6, 10)), ("text", 5)),
               (("text", 2), ("image", (1, 10, 6)), ("text", 3)))),
    # tied head, GQA 2:1; a 3-temporal-patch video with odd merged grid 3x3 and a 2-patch video of merged 1x5
    Case("tied-gqa2-video-t3", tie=True, kv_heads=2, seed=12,
         rows=((("text", 3), ("video", (3, 6, 6), 2.0), ("text", 4)),
               (("text", 5), ("video", (2, 2, 10), 0.5), ("text", 2)))),
    # MQA, untied; image + audio in one row, video (t=3, merged 5x3) in the other
    Case("untied-mqa-mixed", tie=False, kv_heads=1, seed=13,
         rows=((("text", 2), ("audio", 37), ("image", (1, 10, 14)), ("text", 6)),
               (("text", 4), ("video", (3, 10, 6), 1.0), ("text", 3)))),
    # tied head, MQA; a video of t=3 (merged 3x5) with its own audio (TMRoPE audio-in-video), two odd images
    Case("tied-mqa-audio-in-video", tie=True, kv_heads=1, seed=14,
         rows=((("text", 3), ("video+audio", (3, 6, 10), 2.0, 53), ("text", 2)),
               (("text", 2), ("image", (1, 2, 6)), ("text", 1), ("image", (1, 6, 2)), ("text", 4)))),
    # tied head, MHA; media first in a row (no text before it), videos with audio of merged 1x3 and 3x1
    Case("tied-mha-media-first", tie=True, kv_heads=4, seed=15,
         rows=((("image", (1, 2, 10)), ("video+audio", (3, 2, 6), 1.5, 21), ("text", 3)),
               (("text", 6), ("image", (1, 6, 6)), ("video+audio", (2, 6, 2), 1.0, 29), ("text", 2)))),
]


def _build_batch(case: Case, cfg, rng) -> dict:
    rows, images, videos, spgs, audios = [], [], [], [], []
    use_audio_in_video = False
    for row in case.rows:
        ids = []
        for item in row:
            kind = item[0]
            if kind == "text":
                ids += _text(rng, item[1])
            elif kind == "image":
                images.append(item[1])
                ids += [VBOS] + [IMG] * (int(np.prod(item[1])) // 4) + [VEOS]
            elif kind == "video":
                videos.append(item[1])
                spgs.append(item[2])
                ids += [VBOS] + [VID] * (int(np.prod(item[1])) // 4) + [VEOS]
            elif kind == "audio":
                audios.append(item[1])
                ids += [ABOS] + [AUD] * audio_token_count(item[1]) + [AEOS]
            elif kind == "video+audio":
                use_audio_in_video = True
                videos.append(item[1])
                spgs.append(item[2])
                audios.append(item[3])
                runs = R.audio_in_video_layout(np.array(item[1]), float(item[2]), audio_token_count(item[3]), cfg)
                body = [tok for k, n in runs for tok in [VID if k == "video" else AUD] * n]
                ids += [VBOS, ABOS] + body + [AEOS, VEOS]
            else:
                raise ValueError(kind)
        rows.append(ids)
    if use_audio_in_video and any(item[0] in ("audio", "video") for row in case.rows for item in row):
        raise ValueError("HF's use_audio_in_video is per batch: no separate audio or video next to it")
    ids, mask = _left_pad(rows)
    batch = dict(input_ids=ids, attention_mask=mask, use_audio_in_video=use_audio_in_video)
    if images:
        grid = np.array(images)
        batch.update(pixel_values=rng.normal(size=(int(grid.prod(-1).sum()), PATCH_DIM)).astype(np.float32),
                     image_grid_thw=grid)
    if videos:
        grid = np.array(videos)
        batch.update(pixel_values_videos=rng.normal(size=(int(grid.prod(-1).sum()), PATCH_DIM)).astype(np.float32),
                     video_grid_thw=grid, video_second_per_grid=np.array(spgs))
    if audios:
        feats, fmask = _audio_feats(rng, audios, frames=max(audios) + 3)
        batch.update(input_features=feats, feature_attention_mask=fmask)
    return batch


def _saved_hf(case: Case, root) -> tuple:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    hf_cfg = tiny_hf_config(tie=case.tie)
    hf_cfg.text_config.num_key_value_heads = case.kv_heads
    torch.manual_seed(case.seed)
    hf = Qwen2_5OmniThinkerForConditionalGeneration(hf_cfg).eval()
    randomize_(hf, case.seed)
    if case.tie:  # the head really is the embedding table (one parameter, randomised once)
        assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    path = str(root / case.name)
    hf.save_pretrained(path)
    return hf, path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_thinker_logits_match_hf_over_config_grid(case, tmp_path):
    hf, path = _saved_hf(case, tmp_path)
    ours, cfg = P.load_hf(path)
    assert cfg.text.tie_word_embeddings == case.tie and cfg.text.num_kv_heads == case.kv_heads
    batch = _build_batch(case, cfg, np.random.default_rng(case.seed))
    cap = {}
    ref = _hf_forward(hf, batch, cap)
    inputs = prepare_inputs(cfg, **batch)
    valid = batch["attention_mask"] == 1
    np.testing.assert_array_equal(inputs["position_ids"][:, valid], to_np(cap["pos"]).astype(np.int64)[:, valid],
                                  err_msg=f"{case.name}: TMRoPE position ids")
    embeds = np.asarray(ours.embed(inputs))
    emb_err = np.abs(embeds[valid] - to_np(cap["embeds"])[valid]).max()
    np.testing.assert_allclose(embeds[valid], to_np(cap["embeds"])[valid], atol=1e-5, rtol=1e-5,
                               err_msg=f"{case.name}: input embeddings, max abs diff {emb_err:.3g}")
    logits = np.asarray(nnx.jit(lambda m, x: m.forward(x))(ours, inputs))
    diff, scale = np.abs(logits[valid] - ref[valid]).max(), np.abs(ref[valid]).max()
    assert diff / scale < 1e-4, f"{case.name}: max abs logit diff {diff:.3g} (max |logit| {scale:.3g})"
