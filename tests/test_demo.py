"""The demo path end to end at a small size: data -> prep -> tokenizer -> SFT -> checkpoint reload ->
per-modality evaluation -> report. (The full-size demo's accuracy claims are measured by `omnirrm demo`.)"""
import json
import os

import pytest

from omnirrm_jax import demo


@pytest.mark.slow
def test_small_demo_runs_end_to_end(tmp_path):
    cfg = demo.DemoConfig(workdir=str(tmp_path), n_train_per_modality=24, n_eval_per_modality=8, steps=20,
                          control=True, max_new_tokens=40)
    report = demo.run_demo(cfg)
    assert set(report["sft"]) == {"text", "image", "video", "audio"}
    for m, row in report["sft"].items():
        assert set(row) == {"accuracy", "valid_json", "blank_media_accuracy", "mean_reward", "n"}, m
        assert row["n"] == 8 and 0 <= row["accuracy"] <= 1 and 0 <= row["valid_json"] <= 1
        assert row["blank_media_accuracy"] == report["control"][m]["accuracy"]  # from the control run
        assert -1.0 <= row["mean_reward"] <= 1.0  # rewards of 40-token judgements: truncated, so low
    assert set(report["seconds_by_stage"]) == {"data", "sft", "sft_eval", "control", "examples"}
    assert report["checkpoint"] == {"reloaded_equal": True, "step": 20}
    assert set(report["examples"]) == {"text", "image", "video", "audio"}
    on_disk = json.load(open(os.path.join(tmp_path, "demo_report.json")))
    assert on_disk["sft"] == report["sft"]
    summary = json.load(open(os.path.join(tmp_path, "data", "shards", "summary.json")))
    assert summary  # prep wrote its summary (quarantine counts) through the real path
