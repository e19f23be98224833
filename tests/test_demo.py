"""The demo path end to end at a small size: data -> prep -> tokenizer -> SFT -> checkpoint reload ->
per-modality evaluation -> report. (The full-size demo's accuracy claims are measured by `omnirrm demo`.)"""
import json
import os

import pytest

from omnirrm_jax import demo


@pytest.mark.slow
def test_small_demo_runs_end_to_end(tmp_path):
    cfg = demo.DemoConfig(workdir=str(tmp_path), n_train_per_modality=24, n_eval_per_modality=8, steps=20,
                          control=False, max_new_tokens=40)
    report = demo.run_demo(cfg)
    assert set(report["sft"]) == {"text", "image", "video", "audio"}
    assert all(r["n"] == 8 for r in report["sft"].values())
    assert report["checkpoint"] == {"reloaded_equal": True, "step": 20}
    assert set(report["examples"]) == {"text", "image", "video", "audio"}
    on_disk = json.load(open(os.path.join(tmp_path, "demo_report.json")))
    assert on_disk["sft"] == report["sft"]
    summary = json.load(open(os.path.join(tmp_path, "data", "shards", "summary.json")))
    assert summary  # prep wrote its summary (quarantine counts) through the real path
