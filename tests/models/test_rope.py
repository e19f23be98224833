"""TMRoPE position ids (omnirrm_jax.models.rope) against transformers on hand-built processor layouts.

Token ids follow tests/hf_tiny.py: audio 500, image 501, video 502, audio_bos 503, audio_eos 504, vision_bos 505,
vision_eos 506; text ids are < 500. Sequences mimic the chat template the processor renders.
"""
from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omnirrm_jax.models.config import tiny
from omnirrm_jax.models.rope import (audio_in_video_layout, audio_token_count, continue_positions,
                                     decode_positions, get_rope_index)
from tests.hf_tiny import tiny_hf_thinker

A, IMG, VID, ABOS, AEOS, VBOS, VEOS = 500, 501, 502, 503, 504, 505, 506
PAD = 0
CFG = tiny()
HEAD = [1, 10, 11, 2, 12, 1, 13, 12]  # <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n
TAIL = [20, 21, 2, 12, 1, 14, 12]  # question <|im_end|>\n<|im_start|>assistant\n


@pytest.fixture(scope="module")
def hf():
    model = tiny_hf_thinker()
    c = model.config
    assert (c.position_id_per_seconds, c.seconds_per_chunk, model.spatial_merge_size) == (
        CFG.position_id_per_seconds, CFG.seconds_per_chunk, CFG.vision.spatial_merge_size)
    return model


def image(thw):
    return [VBOS] + [IMG] * (int(np.prod(thw)) // 4) + [VEOS]


def video(thw):
    return [VBOS] + [VID] * (int(np.prod(thw)) // 4) + [VEOS]


def audio(mel):
    return [ABOS] + [A] * int(audio_token_count(mel)) + [AEOS]


def audio_video(thw, spg, mel):
    runs = audio_in_video_layout(thw, spg, int(audio_token_count(mel)), CFG)
    return [VBOS, ABOS] + [t for kind, n in runs for t in [VID if kind == "video" else A] * n] + [AEOS, VEOS]


def prompt(*items):
    return HEAD + [t for i, item in enumerate(items) for t in [30 + i] + item] + TAIL


def batch(rows):
    """Left-padded (ids, mask) like the processor's padding_side='left'."""
    S = max(map(len, rows))
    ids = np.array([[PAD] * (S - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (S - len(r)) + [1] * len(r) for r in rows], np.int64)
    return ids, mask


def t(x, dtype=torch.long):
    return None if x is None else torch.tensor(np.asarray(x), dtype=dtype)


def hf_rope(hf, ids, mask, images=None, videos=None, spg=None, mels=None, aiv=False):
    pos, d = hf.model.get_rope_index(t(ids), t(images), t(videos), t(mask), aiv, t(mels), t(spg, torch.float32))
    return pos.numpy(), d.numpy()


def check(hf, rows, images=None, videos=None, spg=None, mels=None, aiv=False, pass_mask=True):
    ids, mask = batch(rows)
    ref_pos, ref_d = hf_rope(hf, ids, mask, images, videos, spg, mels, aiv)
    pos, d = get_rope_index(ids, mask if pass_mask else None, cfg=CFG, image_grid_thw=images, video_grid_thw=videos,
                            second_per_grids=spg, audio_seqlens=mels, use_audio_in_video=aiv)
    assert pos.dtype == np.int64 and d.dtype == np.int64 and d.shape == (len(rows), 1)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(d, ref_d)
    return pos, d


def test_text_only(hf):
    pos, d = check(hf, [HEAD + TAIL], pass_mask=False)
    np.testing.assert_array_equal(pos[:, 0], np.broadcast_to(np.arange(len(HEAD + TAIL)), (3, 15)))
    # Left padding on the plain path, including HF's quirk: a 1-token row gets delta 1 (padding id 1 is the max).
    check(hf, [HEAD + TAIL, [7, 8, 9], [5]])


def test_images(hf):
    check(hf, [prompt(image((1, 8, 12)))], images=[[1, 8, 12]])
    pos, _ = check(hf, [prompt(image((1, 8, 12)), image((1, 6, 4)))], images=[[1, 8, 12], [1, 6, 4]])
    assert pos.max() < pos.shape[-1]  # images compress positions (delta < 0)


@pytest.mark.parametrize("spg", [1.0, 0.5, 2 / 3, 0.4])
def test_video(hf, spg):
    check(hf, [prompt(video((6, 8, 4)))], videos=[[6, 8, 4]], spg=[spg])


def test_audio_and_audio_image(hf):
    check(hf, [prompt(audio(100))], mels=[100])  # no grid: HF's plain path
    check(hf, [prompt(audio(100), image((1, 4, 8)), audio(37))], images=[[1, 4, 8]], mels=[100, 37])


@pytest.mark.parametrize("thw,spg,mel", [
    ((6, 8, 8), 1.0, 600),  # 3 video and 3 audio chunks
    ((4, 4, 4), 3.0, 1000),  # t jumps 75 per frame: the scan emits 1-token video chunks
    ((2, 4, 8), 1.0, 80),  # audio ends below the video ids: eos = last-chunk max + 1 < global max
    ((3, 4, 4), 1.0, 500),  # audio longer: leftover audio chunks follow
    ((9, 4, 4), 1.0, 40),  # video longer: leftover video chunks follow
    ((40, 4, 4), 2 / 1.3, 6200),  # fps 1.3: float32 ids cut where float64 would not (see test_layout_vs_processor)
])
def test_audio_in_video(hf, thw, spg, mel):
    row = prompt(audio_video(thw, spg, mel))
    pos, d = check(hf, [row], videos=[thw], spg=[spg], mels=[mel], aiv=True)
    # The layout must put each token where HF's model scan put its id: video tokens carry the video raster ids
    # (HF's own helper), audio tokens consecutive ids, both anchored one past the shared bos id.
    row = np.array(row)
    bos = int(np.flatnonzero(row == ABOS)[0])
    anchor = int(pos[0, 0, bos]) + 1
    t_index = (torch.arange(thw[0]) * torch.tensor(spg).float() * CFG.position_id_per_seconds).long()
    vid = hf.model.get_llm_pos_ids_for_vision(anchor, 0, 2, t_index, torch.tensor([thw[1]]), torch.tensor([thw[2]]))
    np.testing.assert_array_equal(pos[:, 0, row == VID], vid.numpy())
    n = int(audio_token_count(mel))
    np.testing.assert_array_equal(pos[:, 0, row == A], np.broadcast_to(anchor + np.arange(n), (3, n)))


def test_batch_left_padding(hf):
    rows = [prompt(image((1, 8, 12)), video((4, 4, 8))), prompt(audio(64), image((1, 6, 4)))[3:], HEAD + TAIL]
    check(hf, rows, images=[[1, 8, 12], [1, 6, 4]], videos=[[4, 4, 8]], spg=[0.5], mels=[64])
    aiv = [prompt(audio_video((6, 8, 8), 1.0, 600)),
           prompt(image((1, 4, 4)), audio(90), audio_video((4, 4, 4), 3.0, 300))]
    check(hf, aiv, images=[[1, 4, 4]], videos=[[6, 8, 8], [4, 4, 4]], spg=[1.0, 3.0], mels=[600, 90, 300], aiv=True)


# --------------------------------------------------------------------------------------------------------------
# Processor layout
# --------------------------------------------------------------------------------------------------------------

def hf_processor_layout(thw, spg, n):
    """HF's `replace_video_with_audio_token` run on a stand-in processor (no tokenizer needed)."""
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor as P

    fake = SimpleNamespace(audio_bos_token="<", audio_eos_token=">", video_token="V", audio_token="A",
                           video_processor=SimpleNamespace(merge_size=2))
    fake.get_chunked_index = functools.partial(P.get_chunked_index, fake)
    s = P.replace_video_with_audio_token(fake, {"video_grid_thw": [np.array(thw)], "video_second_per_grid": [spg]},
                                         0, {"num_audio_tokens": [n]}, 0, position_id_per_seconds=25,
                                         seconds_per_chunk=2.0)
    assert s[0] == "<" and s[-1] == ">"
    return [("video" if k == "V" else "audio", len(list(g))) for k, g in itertools.groupby(s[1:-1])]


def merged(runs):
    return [(k, sum(n for _, n in g)) for k, g in itertools.groupby(runs, key=lambda r: r[0])]


def test_layout_vs_processor():
    for fps, T, hw, n in itertools.product([0.5, 1, 2, 3, 4, 5, 8, 30], [1, 2, 5, 17, 60], [(4, 4), (2, 6)],
                                           [0, 1, 49, 50, 51, 300]):
        thw = (T,) + hw
        ours = audio_in_video_layout(thw, 2 / fps, n, CFG)
        assert sum(c for _, c in ours) == T * hw[0] * hw[1] // 4 + n
        assert merged(ours) == hf_processor_layout(thw, 2 / fps, n), (fps, thw, n)
    # Known HF inconsistency, left as is: the processor chunks float64 ids, the model truncated float32 ids. With
    # fps 1.3 frame 39 is 1499.99.. in float64 but 1500 in float32, so HF's own placeholders disagree with HF's
    # positions; ours follow the model (test_audio_in_video checks this very case token by token).
    thw, spg, n = (40, 4, 4), 2 / 1.3, int(audio_token_count(6200))
    assert merged(audio_in_video_layout(thw, spg, n, CFG)) != hf_processor_layout(thw, spg, n)


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------

def test_decode_positions_vs_hf_cached_branch(hf):
    ids, mask = batch([prompt(image((1, 8, 12))), prompt(image((1, 4, 4)))[4:]])
    images = [[1, 8, 12], [1, 4, 4]]
    pos, d = get_rope_index(ids, mask, cfg=CFG, image_grid_thw=images)
    T, S = 3, ids.shape[1]
    full_mask = np.concatenate([mask, np.ones((2, T), np.int64)], 1)
    hf.model.rope_deltas = torch.tensor(d)
    ref = hf.model.compute_3d_position_ids(  # cached branch: mask-cumsum text position + rope_delta
        input_ids=t(np.full((2, T), 7)), image_grid_thw=None, video_grid_thw=None,
        inputs_embeds=torch.zeros(2, T, 64), attention_mask=t(full_mask),
        cache=SimpleNamespace(get_seq_length=lambda: S)).numpy()[..., S:]
    hf.model.rope_deltas = None
    np.testing.assert_array_equal(decode_positions(d, mask.sum(-1), T), ref)
    # Here the prompt ends on its maximum, so every rule agrees: max + 1 + k.
    expect = pos.max(axis=(0, 2))[:, None] + 1 + np.arange(T)
    np.testing.assert_array_equal(decode_positions(d, mask.sum(-1), T), np.broadcast_to(expect, (3, 2, T)))
    np.testing.assert_array_equal(continue_positions(pos, T, mask), decode_positions(d, mask.sum(-1), T))
    # Unpadded row: start = cache length (HF's no-mask branch arange(cache_len, ...) + delta).
    np.testing.assert_array_equal(decode_positions(d[:1], S, T), expect[:1][None].repeat(3, 0))


def hf_generate_positions(hf, ids, mask, steps, **kw):
    """Position ids the language model receives in HF generate, per decode step (3, B) each."""
    seen = []
    handle = hf.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_ids"][1:].numpy().copy()), with_kwargs=True)
    try:
        hf.generate(input_ids=t(ids), attention_mask=t(mask), max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                    do_sample=False, **kw)
    finally:
        handle.remove()
    return np.concatenate(seen[1:], -1)  # drop the prefill


def test_generate_image_batch(hf):
    ids, mask = batch([prompt(image((1, 4, 8))), prompt(image((1, 4, 4)))[2:]])
    images = [[1, 4, 8], [1, 4, 4]]
    pos, d = get_rope_index(ids, mask, cfg=CFG, image_grid_thw=images)
    gen = hf_generate_positions(hf, ids, mask, 2, pixel_values=torch.randn(48, 1176), image_grid_thw=t(images))
    np.testing.assert_array_equal(gen, continue_positions(pos, 2, mask))
    np.testing.assert_array_equal(gen, decode_positions(d, mask.sum(-1), 2))


def test_generate_audio_in_video_trap(hf):
    """Audio ending below the video ids and a prompt that ends right after the item: transformers 5 generate
    continues from the last prompt id, the rope_delta rule from the maximum; they differ here."""
    thw, mel = (2, 4, 8), 80
    ids, mask = batch([[10, 11] + audio_video(thw, 1.0, mel) + [12]])
    kw = dict(videos=[thw], spg=[1.0], mels=[mel], aiv=True)
    pos, d = check(hf, [ids[0].tolist()], **kw)
    gen = hf_generate_positions(
        hf, ids, mask, 2, pixel_values_videos=torch.randn(64, 1176), video_grid_thw=t([thw]),
        video_second_per_grid=torch.tensor([1.0]), input_features=torch.randn(1, 128, mel),
        feature_attention_mask=torch.ones(1, mel, dtype=torch.long), use_audio_in_video=True)
    np.testing.assert_array_equal(gen, continue_positions(pos, 2, mask))
    np.testing.assert_array_equal(gen[:, 0], np.broadcast_to(pos[0, 0, -1] + 1 + np.arange(2), (3, 2)))
    assert pos.max() > pos[0, 0, -1]
    np.testing.assert_array_equal(decode_positions(d, mask.sum(-1), 2)[:, 0],
                                  np.broadcast_to(pos.max() + 1 + np.arange(2), (3, 2)))


def test_random_layouts_match_hf(hf):
    """Seeded fuzz over mixed items, batch sizes, left padding and odd second_per_grid values."""
    rng = np.random.default_rng(0)
    spgs = [1.0, 0.5, 3.0, 2 / 3, 0.4, 2 / 1.3]
    for _ in range(150):
        aiv, rows, g = bool(rng.integers(2)), [], dict(images=[], videos=[], spg=[], mels=[])
        for _ in range(int(rng.integers(1, 4))):
            items = []
            for _ in range(int(rng.integers(0, 4))):
                kind = int(rng.integers(3))
                thw = (int(rng.integers(1, 12)), 2 * int(rng.integers(1, 4)), 2 * int(rng.integers(1, 4)))
                spg, mel = float(rng.choice(spgs + [rng.uniform(0.05, 4)])), int(rng.integers(3, 1500))
                if kind == 0:
                    g["images"].append((1,) + thw[1:])
                    items.append(image((1,) + thw[1:]))
                elif kind == 1:
                    g["mels"].append(mel)
                    items.append(audio(mel))
                else:
                    g["videos"].append(thw)
                    g["spg"].append(spg)
                    if aiv:
                        g["mels"].append(mel)
                    items.append(audio_video(thw, spg, mel) if aiv else video(thw))
            rows.append(prompt(*items)[int(rng.integers(0, 5)):])
        check(hf, rows, aiv=aiv, **{k: (v or None) for k, v in g.items()})
