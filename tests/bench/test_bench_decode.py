"""`omnirrm bench decode` runs on CPU with a tiny preset (the GPU numbers live in docs/PERFORMANCE.md), and its
bandwidth floor counts a shared prompt once per prompt."""
import json

import pytest

from omnirrm_jax.bench import decode as bench_decode
from omnirrm_jax.models import config as C


def test_floor_counts_shared_prompt_once():
    cfg = C.omni_3b(dtype="bfloat16", param_dtype="bfloat16")  # the floor counts the dtypes' widths
    t = cfg.text
    kv_token = 2 * t.num_layers * 2 * t.num_kv_heads * t.head_dim  # bf16 k and v of one token, all layers
    one = bench_decode.floor_tokens_per_s(cfg, 64, 1024, 256, 1000.0)
    shared = bench_decode.floor_tokens_per_s(cfg, 8, 1024, 256, 1000.0, samples=8)
    weights = 64 / one * 1e12 - kv_token * 64 * (1024 + 128)  # bytes per step minus the KV part
    assert abs(weights - 2 * 3.09e9) / 6.2e9 < 0.01, weights  # ~3.09 B text parameters (incl. lm_head) in bf16
    assert abs(64 / shared * 1e12 - (weights + kv_token * (8 * 1024 + 64 * 128))) < 1e3


@pytest.mark.slow
def test_bench_decode_tiny_runs(tmp_path, capsys):
    out = tmp_path / "decode.json"
    bench_decode.main(["--preset", "tiny", "--batch", "2,2x3", "--prompt", "8", "--new", "4", "--no-hf",
                       "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["samples"]) for r in rows] == [(2, 1), (2, 3)]
    for r in rows:
        ours = r["ours"]
        assert ours["generated"] == r["batch"] * r["samples"] * 4
        assert 0 < ours["decode_s"] and 0 < ours["prefill_s"] and ours["decode_tokens_per_s"] > 0
    assert "batch 2x3 samples" in capsys.readouterr().out


def test_bench_decode_samples_like_grpo(tmp_path):
    out = tmp_path / "decode.json"
    bench_decode.main(["--preset", "tiny", "--batch", "2x3", "--prompt", "8", "--new", "4", "--sample",
                       "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["sampled"] and "hf" not in row and row["ours"]["generated"] == 2 * 3 * 4


def test_bench_decode_compares_draws(tmp_path):
    out = tmp_path / "decode.json"
    bench_decode.main(["--preset", "tiny", "--batch", "2x3", "--prompt", "8", "--new", "4", "--no-hf",
                       "--draws", "greedy,candidates,vocab", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["draw"], r["sampled"]) for r in rows] == [("greedy", False), ("candidates", True), ("vocab", True)]
    assert all(r["ours"]["generated"] == 2 * 3 * 4 for r in rows)
    with pytest.raises(SystemExit):
        bench_decode.main(["--preset", "tiny", "--draws", "fast"])


def test_bench_decode_times_a_lora_model_folded_and_branched(tmp_path):
    out = tmp_path / "decode.json"
    bench_decode.main(["--preset", "tiny", "--batch", "2x2", "--prompt", "8", "--new", "4", "--sample",
                       "--lora-rank", "2", "--lora-modes", "fold,branch", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["lora"], r["lora_rank"]) for r in rows] == [("fold", 2), ("branch", 2)]
    assert all(r["ours"]["generated"] == 2 * 2 * 4 and "hf" not in r for r in rows)
    with pytest.raises(SystemExit):
        bench_decode.main(["--preset", "tiny", "--lora-rank", "2", "--lora-modes", "merge"])


def test_floor_counts_the_dtype_width():
    """fp32 weights and cache are twice the bytes of bf16: half the tokens/s at the same bandwidth."""
    bf16 = bench_decode.floor_tokens_per_s(C.omni_3b(dtype="bfloat16", param_dtype="bfloat16"), 8, 1024, 256, 1000.0)
    fp32 = bench_decode.floor_tokens_per_s(C.omni_3b(dtype="float32", param_dtype="float32"), 8, 1024, 256, 1000.0)
    assert fp32 == pytest.approx(bf16 / 2, rel=1e-12)


def test_bench_attention_runs_its_variants(tmp_path):
    """The harness on CPU (the kernel interpreted: its timings mean nothing here): a row per variant."""
    from omnirrm_jax.bench import attention as bench_attention

    out = tmp_path / "attention.json"
    bench_attention.main(["--preset", "tiny", "--batch", "2x2", "--prompt", "40", "--new", "20", "--filled", "1,20",
                          "--variants", "2x32,1x64:3", "--layers", "2", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["splits"], r["block"], r["stages"], sorted(r["us_per_layer"])) for r in rows] == [
        (2, 32, 2, ["1", "20"]), (1, 64, 3, ["1", "20"])]
    for bad in ("8", "s64", "8x128:0"):
        with pytest.raises(SystemExit):
            bench_attention.main(["--variants", bad])
    with pytest.raises(SystemExit):  # a block larger than the cache the sampler allocates at this shape
        bench_attention.main(["--preset", "tiny", "--batch", "2x2", "--prompt", "40", "--new", "20", "--variants",
                              "1x256"])
