"""`omnirrm bench sft --small` runs our LoRA SFT step and the HF + PEFT baseline on CPU; the model-FLOP count
that MFU uses is pinned at 3B dimensions (the GPU numbers live in docs/PERFORMANCE.md)."""
import json

import pytest

from omnirrm_jax.bench import sft as bench_sft
from omnirrm_jax.models import config as C


def test_flops_per_token_at_3b():
    cfg = C.omni_3b()
    # 36 x (q,k,v 2048x2560 + o 2048x2048 + gate/up/down 3x2048x11008) + lm_head 151936x2048
    assert bench_sft.matmul_params(cfg) == 36 * (2048 * 2560 + 2048 * 2048 + 3 * 2048 * 11008) + 151936 * 2048
    # + causal attention: forward 2*T*d per layer and token, backward twice that
    assert bench_sft.flops_per_token(cfg, 3072) == 4 * 3_085_697_024 + 3 * 36 * 2 * 3072 * 2048


@pytest.mark.slow  # two JAX compiles and two torch models: ~20 s on 2 cores
def test_bench_sft_small_runs_ours_and_hf(tmp_path, capsys):
    out = tmp_path / "sft.json"
    bench_sft.main(["--small", "--steps", "1", "--warmup", "1", "--remat", "none,full", "--json", str(out)])
    res = json.loads(out.read_text())
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == res  # the result as one JSON line, after one line per finished row
    rows = [line.split(":")[0] for line in lines[:-1] if not line.startswith("ours (")]  # compile notes apart
    assert rows == ["hf", "hf", "ours", "ours"]
    assert [r["remat"] for r in res["ours"]] == ["none", "full"]
    assert [r["checkpointing"] for r in res["hf"]] == [False, True]
    # both sides train the same LoRA factors (same targets, rank) on the same shapes
    assert {r["trainable_params"] for r in res["ours"] + res["hf"]} == {res["ours"][0]["trainable_params"]}
    # remat changes what is kept, not what is computed
    assert res["ours"][0]["loss"] == pytest.approx(res["ours"][1]["loss"], rel=1e-6)
    # per device: ours runs data-parallel on every local device (8 fake CPU devices here), HF on one
    per_device = res["ours_best_tokens_per_s"] / res["devices"]
    assert res["speedup_vs_hf_best"] == pytest.approx(per_device / res["hf_best_tokens_per_s"])


def test_bench_sft_profile_and_memory(tmp_path, capsys):
    """--profile traces two more steps and summarises them by kernel; XLA's memory analysis comes with each row."""
    out = tmp_path / "sft.json"
    bench_sft.main(["--small", "--no-hf", "--steps", "1", "--warmup", "1", "--remat", "none",
                    "--profile", str(tmp_path / "prof"), "--json", str(out)])
    row = json.loads(out.read_text())["ours"][0]
    prof = row["profile"]
    assert prof["busy_ms"] > 0 and prof["top"] and sum(prof["kinds"].values()) == pytest.approx(prof["busy_ms"],
                                                                                               rel=1e-3)
    assert all(r["count"] >= 2 for r in prof["top"][:3])  # the two traced steps each ran the top kernels
    assert row["xla_memory_gib"]["argument"] > 0
    assert "profile" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ours"][0]
