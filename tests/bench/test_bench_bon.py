"""`omnirrm bench bon` runs on CPU with the tiny preset (a smoke test; the GPU numbers are the lead's to measure)."""
import json

import pytest

from omnirrm_jax.bench import bon as bench_bon
from omnirrm_jax.models import config as C


def test_prompts_have_one_image_each():
    cfg = C.tiny()
    rows = bench_bon.make_prompts(cfg, 3, text=20)
    merge = cfg.vision.spatial_merge_size ** 2
    for r in rows:
        assert int((r["ids"] == cfg.image_token_id).sum()) == int(r["grid"][0] * r["grid"][1] * r["grid"][2]) // merge
    assert len({r["grid"] for r in bench_bon.make_prompts(cfg, 45, text=20)}) == 3
    one = bench_bon.make_prompts(cfg, 45, text=20, grids=bench_bon._grids("medium"))
    assert {r["grid"] for r in one} == {(1, 48, 64)} and bench_bon._grids("mixed") is None


@pytest.mark.slow
def test_bench_bon_tiny_runs(tmp_path, capsys):
    out = tmp_path / "bon.json"
    assert bench_bon.main(["--preset", "tiny", "--questions", "2", "-n", "3", "--batch", "4", "--new", "2",
                           "--text", "16", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    s = res["strategies"]
    assert s["reward"]["judge_calls"] == 2 * 3 * 2 and s["reward_ref"]["judge_calls"] == 2 * 2 * 2
    assert s["elimination"]["judge_calls"] == 2 * 2
    assert all(v["candidates_per_s"] > 0 for v in s.values())
    assert "| elimination |" in capsys.readouterr().out
