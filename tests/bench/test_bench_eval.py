"""`omnirrm bench eval` runs on CPU with a tiny preset, ours and both transformers baselines (the GPU numbers live in
docs/PERFORMANCE.md); the mix holds the three image sizes with their placeholder counts."""
import json

import numpy as np
import pytest

from omnirrm_jax.bench import eval as bench_eval
from omnirrm_jax.models import config as C


def test_mix_has_the_three_image_sizes():
    cfg = C.tiny()
    rows = bench_eval.make_mix(cfg, 6)
    merge = cfg.vision.spatial_merge_size ** 2
    for r in rows:
        assert int((r["ids"] == cfg.image_token_id).sum()) == int(np.prod(r["grid"])) // merge
        assert r["pixels"].shape[0] == int(np.prod(r["grid"]))
    assert {tuple(r["grid"]) for r in rows} == set(bench_eval.GRIDS)
    assert [len(b) for b in bench_eval.batches(rows, 4)] == [4, 2]


@pytest.mark.slow
def test_bench_eval_tiny_runs(tmp_path, capsys):
    out = tmp_path / "eval.json"
    bench_eval.main(["--preset", "tiny", "--rows", "3", "--batch", "2", "--new", "3", "--hf-single-rows", "1",
                     "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["ours"]["rows"] == 3 and res["hf_batched"]["rows"] == 3 and res["hf_single"]["rows"] == 1
    assert res["speedup_vs_single"] > 0 and res["speedup_vs_batched"] > 0
    assert "judgements/s" in capsys.readouterr().out
