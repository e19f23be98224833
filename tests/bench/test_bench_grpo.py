"""`omnirrm bench grpo --small` runs our whole GRPO cycle on CPU and prints its lower bound beside it (the GPU
numbers live in docs/PERFORMANCE.md)."""
import json

import jax
import pytest

from omnirrm_jax.bench import grpo as bench_grpo

SMALL = ["--small", "--no-hf", "--prompts", "2", "--generations", "2", "--prompt", "16", "--completion", "4",
         "--steps", "1", "--rows-per-chunk", "2"]


@pytest.mark.slow  # a GRPO cycle and an SFT step compiled on 2 cores: ~30 s
def test_bench_grpo_small_runs(tmp_path, capsys, restore_compile_cache):
    out = tmp_path / "grpo.json"
    jax.clear_caches()  # programs earlier tests left in memory would not be compiled, so not written
    bench_grpo.main(SMALL + ["--json", str(out), "--compile-cache", str(tmp_path / "cache")])
    res = json.loads(out.read_text())
    ours = res["ours"]
    assert ours["step_s"] > 0 and ours["rollout_s"] > 0 and ours["update_s"] > 0
    # the rewards are scored on the host while the reference pass runs: inside reference_s, not added to it
    assert abs(ours["step_s"] - sum(ours[k] for k in ("rollout_s", "reference_s", "update_s"))) < 0.05
    assert ours["rewards_s"] <= ours["reference_s"]
    printed = capsys.readouterr().out
    assert "GRPO step 2 prompts x G=2" in printed
    # the bound, from this process's own measurements (no listed peak for a CPU: MFU unknown, FLOP/s measured)
    bound = res["bound"]
    assert bound["inputs"]["sft_source"] == "measured" and bound["inputs"]["sft_mfu"] is None
    assert bound["inputs"]["copy_bandwidth_GBps"] > 0 and bound["inputs"]["sft_flops_per_s"] > 0
    assert bound["inputs"]["sft_seq"] == 16 + 4
    for part in ("prefill", "decode", "rollout", "reference", "update", "step"):
        assert bound[f"{part}_s"] > 0, part
    for part, ratio in bound["measured_over_bound"].items():
        assert ratio == pytest.approx(ours[f"{part}_s"] / bound[f"{part}_s"]), part
    assert set(bound["measured_over_bound"]) == {"rollout", "reference", "update", "step"}
    for part in ("rollout", "reference", "update", "step"):
        ratio = bound["measured_over_bound"][part]
        assert f"  {part:<9} measured {ours[part + '_s']:.3f} s, bound {bound[part + '_s']:.3f} s" in printed
        assert f": {ratio:.2f}x\n" in printed
    # a second run with the same shapes (a resumed run) reads its first step's programs back from the cache
    assert ours["first_step_programs"] > 0 and ours["first_step_cache_hits"] == 0
    jax.clear_caches()  # as a new process
    bench_grpo.main(SMALL + ["--json", str(out), "--compile-cache", str(tmp_path / "cache"), "--no-bound"])
    again = json.loads(out.read_text())["ours"]
    assert again["first_step_cache_hits"] == again["first_step_programs"] == ours["first_step_programs"]


def test_bench_grpo_sft_mfu_needs_a_known_peak(capsys):
    """A given MFU is a fraction of the card's listed peak; a CPU has none, so it is refused before any work."""
    with pytest.raises(SystemExit):
        bench_grpo.main(SMALL + ["--sft-mfu", "0.4"])
    assert "PEAK_FLOPS lists none" in capsys.readouterr().err


def test_median_step_keeps_one_steps_parts_together():
    from omnirrm_jax.bench.grpo import median_step

    steps = [{"step_s": 5.0, "rollout_s": 4.0}, {"step_s": 7.0, "rollout_s": 3.0}, {"step_s": 6.0, "rollout_s": 5.0}]
    assert median_step(steps) == {"step_s": 6.0, "rollout_s": 5.0}  # not the per-part medians 6.0 / 4.0
    assert median_step(steps[:2]) == {"step_s": 5.0, "rollout_s": 4.0}  # an even count: the lower middle
