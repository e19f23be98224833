"""Packed SFT batches (`pack=True`): first-fit keeps every example once within the row length and media budget;
the pipeline's packed rows hold every record exactly once with the judgement loss mask and per-example positions;
and on the demo data (every modality) a packed batch gives the loss and per-example logits of the same examples
unpacked."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.data import examples as E
from omnirrm_jax.data import packing as P
from omnirrm_jax.data import pipeline as PL
from omnirrm_jax.models.thinker import Thinker, model_inputs
from omnirrm_jax.training.losses import masked_cross_entropy
from tests.data.test_pipeline import MEDIA, SEQ, _batches, _cfg, _records, demo  # noqa: F401 - demo: a fixture


def test_first_fit_places_every_example_once_within_the_limits():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=200)
    costs = rng.integers(0, 5, size=(200, 4)) * (rng.random((200, 1)) < 0.3)
    limit = (12, 12, 12, 12)
    batches = P.first_fit(lengths, costs, row_len=64, batch_size=3, max_media=limit)
    seen = sorted(i for rows in batches for row in rows for i in row)
    assert seen == list(range(200))
    for rows in batches:
        assert 1 <= len(rows) <= 3
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        assert (np.sum([costs[i] for row in rows for i in row], 0) <= limit).all()
    assert sum(len(rows) for rows in batches) < 200 * 0.7  # it does pack
    with pytest.raises(ValueError, match="cannot fit"):
        P.first_fit([65], [(0, 0, 0, 0)], row_len=64, batch_size=3, max_media=limit)
    capped = P.first_fit([1] * 40, [(0, 0, 0, 0)] * 40, row_len=64, batch_size=3, max_media=limit, max_segments=4)
    assert [len(row) for rows in capped for row in rows] == [4] * 10  # the cap, not the row length, closes a row


def test_pack_is_sft_only():
    with pytest.raises(ValueError, match="pack is for SFT"):
        PL.PipelineConfig(mode="grpo", pack=True)


def _packed_cfg(**kw):
    return _cfg(**{"pack": True, "pack_buffer": 16, "drop_remainder": False, **kw})


def test_packed_rows_hold_every_record_once(demo):
    tok, recs = demo["tok"], _records(demo, "sft")
    batches = _batches(demo, _packed_cfg(batch_size=2))
    assert len(batches) < len(recs) // 2  # fewer batches than unpacked
    seen = []
    for b in batches:
        assert b["input_ids"].shape[1] in SEQ
        seg = b["segment_ids"]
        for r in range(seg.shape[0]):
            k = int(seg[r].max())
            assert (b["example_index"][r, k:] == -1).all() and (b["example_index"][r, :k] >= 0).all()
            assert (seg[r] > 0).sum() == b["attention_mask"][r].sum()
            for j in range(1, k + 1):  # contiguous, in order, padding only at the end
                where = np.flatnonzero(seg[r] == j)
                assert (np.diff(where) == 1).all() and (j == 1 or where[0] == np.flatnonzero(seg[r] == j - 1)[-1] + 1)
                idx = int(b["example_index"][r, j - 1])
                seen.append(idx)
                m, ids = b["loss_mask"][r, where], b["input_ids"][r, where]
                assert tok.decode(ids[m == 1]) == recs[idx]["messages"][-1]["content"] + "<|im_end|>"
                ex = E.build_example(recs[idx], idx, tok, demo["cfg"], mode="sft", max_length=max(SEQ),
                                     max_media=MEDIA[-1])
                np.testing.assert_array_equal(b["position_ids"][:, r, where], ex["position_ids"])
    assert sorted(seen) == list(range(len(recs)))
    shapes = {(tuple(b["input_ids"].shape), E.batch_signature(b)) for b in batches}
    allowed = PL.batch_shapes(_packed_cfg(batch_size=2), demo["cfg"])
    assert all(any(s["input_ids"][0] == shape for s in allowed) for shape, _ in shapes)
    assert all(set(b) == set(allowed[0]) for b in batches)


def test_packed_resume_is_exact(demo):
    cfg = _packed_cfg(batch_size=2, pack_buffer=6)
    it = iter(PL.make_dataset(demo["root"] / "sft", demo["tok"], demo["cfg"], cfg, process_index=0, process_count=1))
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    rest = list(it)
    it2 = iter(PL.make_dataset(demo["root"] / "sft", demo["tok"], demo["cfg"], cfg, process_index=0,
                               process_count=1))
    it2.set_state(state)
    again = list(it2)
    assert first and rest and len(rest) == len(again)
    for a, b in zip(rest, again):
        for k in ("input_ids", "segment_ids", "position_ids", "example_index", "pixel_values", "audio_chunks"):
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_packed_batches_give_the_unpacked_loss_and_logits(demo):
    """Every modality of the demo (text, image, video, audio): the packed batch and one unpacked batch of the same
    examples agree on the loss to 1e-6 and on each example's logits to 2e-5. The logits bound is the fp32 noise of
    running ~450-token rows in differently shaped batches: the unpacked batch itself differs from an example run
    alone by ~4e-6 here (and `test_pipeline` allows 2e-5 for the same reason); `tests/models/test_packing.py`
    holds short rows to 1e-6."""
    tok, recs, cfg = demo["tok"], _records(demo, "sft"), dataclasses.replace(demo["cfg"], attention_backend="xla")
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    modalities = set()
    for b in _batches(demo, _packed_cfg(batch_size=2)):
        idx = [int(i) for i in b["example_index"].reshape(-1) if i >= 0]
        exs = [E.build_example(recs[i], i, tok, cfg, mode="sft", max_length=max(SEQ), max_media=MEDIA[-1])
               for i in idx]
        modalities |= {ex["modality"] for ex in exs}
        S = b["input_ids"].shape[1]  # the packed batch's buckets, so the towers see the same padded shapes
        un = E.finalize(E.collate(exs, batch_size=len(exs), seq_len=S, media=E.batch_signature(b)[1:], pad_id=0,
                                  mode="sft", patch_dim=cfg.vision.patch_dim), cfg)
        out = {}
        for name, batch in (("packed", b), ("unpacked", un)):
            h = model.forward(model_inputs(batch), return_hidden=True)
            loss, n = masked_cross_entropy(h, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["loss_mask"]),
                                           model=model)
            out[name] = (np.asarray(model.logits(h)), float(loss), float(n))
        assert out["packed"][2] == out["unpacked"][2]
        np.testing.assert_allclose(out["packed"][1], out["unpacked"][1], rtol=1e-6, atol=1e-6)
        k = 0
        for r in range(b["segment_ids"].shape[0]):
            for j in range(1, int(b["segment_ids"][r].max()) + 1):
                where = np.flatnonzero(b["segment_ids"][r] == j)
                n = len(where)
                np.testing.assert_allclose(out["packed"][0][r, where], out["unpacked"][0][k, S - n:], rtol=2e-5,
                                           atol=2e-5, err_msg=f"record {idx[k]}")
                k += 1
    assert len(modalities) == 4
