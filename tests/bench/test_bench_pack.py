"""`omnirrm bench pack`: the length mix of real judge examples, batched both ways exactly as the pipeline does, must
account for every example once on each side with the same real tokens; `--small` runs the whole bench on CPU (the
GPU numbers are the lead's to measure)."""
import json
from pathlib import Path

import numpy as np
import pytest

from omnirrm_jax.bench import pack as bench_pack
from omnirrm_jax.errors import MissingPathError

# the release's first rows of both files (tests/fixtures/benchmarks/README.md): no ../shared needed
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def _sides(argv):
    args = bench_pack.parse_args(argv + ["--benchmarks", str(FIXTURE)])
    examples, info = bench_pack.prepare_examples(args, vocab_size=512)
    batches = {s: bench_pack.host_batches(examples, args.pipelines[s], patch_dim=1176, pad_id=0)
               for s in bench_pack.SIDES}
    return args, examples, info, batches


def test_both_batchings_use_every_example_once_and_packing_pads_less():
    args, examples, info, batches = _sides(["--small", "--examples", "24", "--batch", "4"])
    acc = {s: bench_pack.accounting(batches[s], len(examples)) for s in bench_pack.SIDES}
    b, p = acc["bucketed"], acc["packed"]
    assert b["each_example_once"] and p["each_example_once"] and b["examples"] == p["examples"] == 24
    assert b["real_tokens"] == p["real_tokens"] == sum(len(e["input_ids"]) for e in examples)
    assert b["target_tokens"] == p["target_tokens"] == sum(e["n_target"] for e in examples)
    assert p["padding_fraction"] < b["padding_fraction"] and p["steps"] < b["steps"]
    # shapes: bucketed batches take the pipeline's buckets, packed rows hold several examples in rows of row_len
    assert {int(k) for k in b["shapes"]} <= set(args.buckets)
    for batch in batches["packed"]:
        seg = batch["data"]["segment_ids"]
        assert seg.shape[1] <= args.row_len and ((seg > 0) == (batch["data"]["attention_mask"] > 0)).all()
    assert max(int(batch["data"]["segment_ids"].max()) for batch in batches["packed"]) > 1
    # the mix: both files in proportion, judgements in the drawn range, video tokens per frame pair at the
    # reference's sizes (280x392 frames: 10 x 14 merged tokens per pair)
    mix = info["mix"]
    assert mix["modalities"]["video"]["examples"] == 2 and mix["modalities"]["text"]["examples"] == 22
    assert 300 <= mix["judgement_tokens"]["min"] and mix["judgement_tokens"]["max"] <= 620
    videos = [e for e in examples if e["modality_name"] == "video"]
    assert all(e["cost"][2] // 4 % 140 == 0 and 5 * 140 <= e["cost"][2] // 4 <= 10 * 140 for e in videos)
    assert not info["skipped"] and 3 < info["chars_per_token"] < 6


def test_the_mix_is_deterministic():
    a = _sides(["--small", "--examples", "6"])[1]
    b = _sides(["--small", "--examples", "6"])[1]
    assert [len(e["input_ids"]) for e in a] == [len(e["input_ids"]) for e in b]
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))


def test_missing_benchmark_files_are_a_clear_error(tmp_path):
    args = bench_pack.parse_args(["--small", "--benchmarks", str(tmp_path)])
    with pytest.raises(MissingPathError, match="hh_rlhf_2000.jsonl"):
        bench_pack.prepare_examples(args, vocab_size=512)


@pytest.mark.slow  # five CPU compiles of 2 x 3072-token steps and a timed pass each: ~60 s on 2 busy cores
def test_bench_pack_small_runs_both_sides(tmp_path, capsys):
    out = tmp_path / "pack.json"
    assert bench_pack.main(["--small", "--benchmarks", str(FIXTURE), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    b, p = res["bucketed"], res["packed"]
    assert b["each_example_once"] and p["each_example_once"]
    assert b["examples"] == p["examples"] == res["mix"]["examples"] == bench_pack.SMALL_EXAMPLES
    assert b["real_tokens"] == p["real_tokens"] and b["target_tokens"] == p["target_tokens"]
    assert p["padding_fraction"] < b["padding_fraction"]
    assert b["finite"] and p["finite"] and b["seconds"] > 0 and p["seconds"] > 0
    assert res["packed_over_bucketed"] == pytest.approx(p["effective_tokens_per_s"] / b["effective_tokens_per_s"])
    assert b["effective_tokens_per_s"] == pytest.approx(b["real_tokens"] / b["seconds"])
    printed = capsys.readouterr().out
    assert "| bucketed |" in printed and "| packed |" in printed and "packed / bucketed" in printed


def test_dry_run_prints_the_batching_without_a_model(tmp_path, capsys):
    out = tmp_path / "dry.json"
    assert bench_pack.main(["--dry-run", "--examples", "24", "--benchmarks", str(FIXTURE), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] and res["bucketed"]["real_tokens"] == res["packed"]["real_tokens"] > 0
    assert "seconds" not in res["packed"]  # nothing ran
    printed = capsys.readouterr().out
    assert "| packed |" in printed and "padding alone" in printed
