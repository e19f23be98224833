"""Packed rows (`segment_ids`): each example's logits and the batch loss equal those of the same examples unpacked
(fp32, highest precision, 1e-6), text-only and with an image example; no token sees another segment; the attention
backends get the combined causal-and-segment mask."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.data import examples as E
from omnirrm_jax.data import packing as P
from omnirrm_jax.models import config as C
from omnirrm_jax.models import rope
from omnirrm_jax.models.thinker import Thinker, model_inputs
from omnirrm_jax.training.losses import masked_cross_entropy

MEDIA = (64, 64, 8, 64)


def _example(cfg, rng, index, n_text, n_target, image_grid=None):
    """A `build_example`-shaped SFT example: text (+ one image after the first 3 tokens), the last n_target
    tokens are targets."""
    ids = list(rng.integers(1, 400, size=n_text))
    grid = np.zeros((0, 3), np.int64)
    pixels = None
    if image_grid is not None:
        grid = np.asarray([image_grid], np.int64)
        n_img = int(np.prod(image_grid)) // cfg.vision.spatial_merge_size ** 2
        ids = ids[:3] + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] + ids[3:]
        pixels = rng.normal(size=(int(np.prod(image_grid)), cfg.vision.patch_dim)).astype(np.float32)
    ids = np.asarray(ids, np.int64)
    pos, delta = rope.get_rope_index(ids[None], cfg=cfg, image_grid_thw=grid if len(grid) else None)
    n = len(ids)
    return {"index": index, "modality": 0, "input_ids": ids.astype(np.int32), "position_ids": pos[:, 0].astype(np.int32),
            "rope_delta": int(delta[0, 0]), "loss_mask": (np.arange(n) >= n - n_target).astype(np.int32),
            "gold": None, "image_grid": grid, "video_grid": np.zeros((0, 3), np.int64),
            "audio_lens": np.zeros(0, np.int64), "pixel_values": pixels, "pixel_values_videos": None,
            "audio_features": None, "cost": (n, int(grid.prod(-1).sum()), 0, 0, 0)}


def _unpacked(cfg, exs, S):
    pre = E.collate(exs, batch_size=len(exs), seq_len=S, media=MEDIA, pad_id=0, mode="sft",
                    patch_dim=cfg.vision.patch_dim)
    return E.finalize(pre, cfg)


def _packed(cfg, rows, S):
    pre = P.collate_packed(rows, batch_size=len(rows), seq_len=S, media=MEDIA, pad_id=0,
                           patch_dim=cfg.vision.patch_dim)
    return E.finalize(pre, cfg)


def _run(model, batch):
    hidden = model.forward(model_inputs(batch), return_hidden=True)
    loss, n = masked_cross_entropy(hidden, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["loss_mask"]),
                                   model=model)
    return np.asarray(model.logits(hidden)), float(loss), float(n)


def _examples(cfg, with_image):
    rng = np.random.default_rng(0)
    exs = [_example(cfg, rng, 0, 9, 4), _example(cfg, rng, 1, 6, 2, image_grid=(1, 4, 4) if with_image else None),
           _example(cfg, rng, 2, 12, 5), _example(cfg, rng, 3, 5, 3),
           _example(cfg, rng, 4, 7, 3, image_grid=(1, 4, 8) if with_image else None)]
    return exs, [[exs[0], exs[1], exs[2]], [exs[3], exs[4]]]


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_packed_logits_and_loss_equal_unpacked(with_image):
    cfg = C.tiny(attention_backend="xla")
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    exs, rows = _examples(cfg, with_image)
    S = 48
    logits_u, loss_u, n_u = _run(model, _unpacked(cfg, exs, S))
    packed = _packed(cfg, rows, S)
    logits_p, loss_p, n_p = _run(model, packed)
    k = 0
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex["input_ids"])
            np.testing.assert_allclose(logits_p[r, at:at + n], logits_u[k, S - n:], rtol=1e-6, atol=1e-6,
                                       err_msg=f"example {ex['index']} (row {r}, offset {at})")
            at, k = at + n, k + 1
    assert n_p == n_u == sum(int(ex["loss_mask"].sum()) for ex in exs)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-6, atol=1e-6)


def test_no_token_attends_across_segments():
    cfg = C.tiny(attention_backend="xla")
    model = Thinker(cfg, rngs=nnx.Rngs(1))
    exs, rows = _examples(cfg, with_image=True)
    S = 48
    base = _packed(cfg, rows, S)
    changed = {k: v for k, v in base.items()}
    seg = base["segment_ids"]
    first = seg[0] == 2  # the image example: perturb its text and its pixels
    ids = base["input_ids"].copy()
    text = first & (ids[0] < 400)
    ids[0, text] = (ids[0, text] + 7) % 400 + 1
    changed["input_ids"] = ids
    px = base["pixel_values"].copy()
    px[:16] += 1.0  # the first image's patches (row 0's only image)
    changed["pixel_values"] = px
    a = np.asarray(model.forward(model_inputs(base)))
    b = np.asarray(model.forward(model_inputs(changed)))
    others = (seg > 0) & ~((np.arange(seg.shape[0]) == 0)[:, None] & first)
    assert not np.allclose(a[0][first], b[0][first])  # the perturbation does reach its own segment
    np.testing.assert_array_equal(a[others], b[others])


def test_backends_get_the_causal_segment_mask(monkeypatch):
    from omnirrm_jax.models import layers as L

    seen = []
    real = L._BACKENDS["xla"]

    def spy(q, k, v, *, mask, is_causal, scale):
        seen.append((None if mask is None else np.asarray(mask), is_causal))
        return real(q, k, v, mask=mask, is_causal=is_causal, scale=scale)

    monkeypatch.setitem(L._BACKENDS, "xla", spy)
    cfg = C.tiny(attention_backend="xla", scan_layers=False)  # eager, one call per layer: the spy sees arrays
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    seg = np.asarray([[1, 1, 2, 2, 2, 0]], np.int32)
    model.model(jnp.ones((1, 6, cfg.text.hidden_size)), jnp.zeros((3, 1, 6), jnp.int32), jnp.asarray(seg > 0),
                segment_ids_BT=jnp.asarray(seg))
    want = np.tril(np.ones((6, 6), bool)) & (seg[0][:, None] == seg[0][None, :])
    assert len(seen) == cfg.text.num_layers
    for mask, is_causal in seen:
        assert not is_causal
        np.testing.assert_array_equal(mask[0], want)


def test_repadded_packed_batch_keeps_logits_and_loss():
    """Several hosts agree on one bucket by growing packed batches (`pad_batch`: segment 0 padding after the segments)."""
    cfg = C.tiny(attention_backend="xla")
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    _, rows = _examples(cfg, with_image=True)
    b = _packed(cfg, rows, 48)
    sig = E.batch_signature(b)
    grown = E.pad_batch(b, (64,) + sig[1:], pad_id=0)
    assert grown["segment_ids"].shape == grown["example_index"].shape == (2, 64)
    np.testing.assert_array_equal(grown["example_index"][:, :48], b["example_index"])
    logits, loss, n = _run(model, b)
    logits_g, loss_g, n_g = _run(model, grown)
    assert n == n_g
    np.testing.assert_allclose(loss_g, loss, rtol=1e-6, atol=1e-6)
    real = b["segment_ids"] > 0
    np.testing.assert_array_equal(grown["segment_lengths"], b["segment_lengths"])
    np.testing.assert_allclose(logits_g[:, :48][real], logits[real], rtol=1e-6, atol=1e-6)


def test_packed_runs_are_the_segments_then_the_padding():
    """cuDNN's packed layout (`packed_runs`): each row's segments, then its padding, as causal sequences; read back
    as a mask, it is exactly the causal-and-same-segment mask, and rows whose ids disagree with their lengths are
    flagged."""
    from omnirrm_jax.models import layers as L

    ids = np.asarray([[1, 1, 1, 2, 2, 3, 0, 0],   # three segments and padding
                      [1, 1, 1, 1, 2, 2, 2, 2],   # full: no padding run
                      [0, 0, 0, 0, 0, 0, 0, 0],   # a padding row
                      [1, 1, 2, 2, 2, 0, 0, 0],   # ids disagree with its lengths (2, 2)
                      [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)  # lengths claim more than the row (8 + 2)
    lengths = np.asarray([[3, 2, 1], [4, 4, 0], [0, 0, 0], [2, 2, 0], [8, 2, 0]], np.int32)
    seqlens, offsets, ok = (np.asarray(a) for a in L.packed_runs(L.PackedRows(jnp.asarray(ids), jnp.asarray(lengths))))
    np.testing.assert_array_equal(seqlens[:3], [[3, 2, 1, 2], [4, 4, -1, -1], [-1, -1, -1, 8]])
    np.testing.assert_array_equal(offsets[:3], [[0, 3, 5, 6, -1], [0, 4, -1, -1, -1], [-1, -1, -1, 0, -1]])
    np.testing.assert_array_equal(ok, [True, True, True, False, False])
    want = np.asarray(L.packed_mask(jnp.asarray(ids)))
    for r in range(3):
        mask = np.zeros((8, 8), bool)
        for n, at in zip(seqlens[r], offsets[r]):
            if n > 0:
                mask[at:at + n, at:at + n] = np.tril(np.ones((n, n), bool))
        np.testing.assert_array_equal(mask, want[r], err_msg=f"row {r}")


def test_collate_packed_records_segment_lengths():
    cfg = C.tiny(attention_backend="xla")
    _, rows = _examples(cfg, with_image=False)
    b = _packed(cfg, rows, 48)
    assert b["segment_lengths"].shape == (2, P.MAX_SEGMENTS)
    for r, row in enumerate(rows):
        n = [len(ex["input_ids"]) for ex in row]
        np.testing.assert_array_equal(b["segment_lengths"][r], n + [0] * (P.MAX_SEGMENTS - len(n)))
        np.testing.assert_array_equal(np.bincount(b["segment_ids"][r], minlength=len(n) + 1)[1:], n)
    with pytest.raises(ValueError, match="max_segments 2"):
        P.collate_packed(rows, batch_size=2, seq_len=48, media=MEDIA, pad_id=0, patch_dim=cfg.vision.patch_dim,
                         max_segments=2)
