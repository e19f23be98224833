"""`omnirrm bench grpo --small` runs our whole GRPO cycle on CPU (the GPU numbers live in docs/PERFORMANCE.md)."""
import json

import pytest

from omnirrm_jax.bench import grpo as bench_grpo


@pytest.mark.slow
def test_bench_grpo_small_runs(tmp_path, capsys):
    out = tmp_path / "grpo.json"
    bench_grpo.main(["--small", "--no-hf", "--prompts", "2", "--generations", "2", "--prompt", "16",
                     "--completion", "4", "--steps", "1", "--rows-per-chunk", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    ours = res["ours"]
    assert ours["step_s"] > 0 and ours["rollout_s"] > 0 and ours["update_s"] > 0
    assert abs(ours["step_s"] - sum(ours[k] for k in ("rollout_s", "rewards_s", "reference_s", "update_s"))) < 0.05
    assert "GRPO step 2 prompts x G=2" in capsys.readouterr().out
