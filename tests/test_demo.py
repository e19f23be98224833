"""The demo path end to end at a small size: data -> prep -> tokenizer -> SFT -> checkpoint reload ->
per-modality evaluation -> GRPO (LoRA) -> merged export reloaded -> evaluation -> report. (The full-size demo's
accuracy and reward claims are measured by `omnirrm demo` and kept in docs/RESULTS.md.)"""
import json
import math
import os

import pytest

from omnirrm_jax import demo
from omnirrm_jax.demo_grpo import DemoGRPOConfig

MODALITIES = {"text", "image", "video", "audio"}
ROW_KEYS = {"accuracy", "valid_json", "blank_media_accuracy", "mean_reward", "n"}


def _check_rows(rows: dict, stage: str) -> None:
    assert set(rows) == MODALITIES, stage
    for m, row in rows.items():
        assert set(row) == ROW_KEYS, (stage, m)
        assert row["n"] == 8, (stage, m)
        for key in ("accuracy", "valid_json", "blank_media_accuracy"):
            assert math.isfinite(row[key]) and 0 <= row[key] <= 1, (stage, m, key, row[key])
        # rewards of 40-token judgements: truncated, so low, but a number in the reward's range
        assert math.isfinite(row["mean_reward"]) and -1.0 <= row["mean_reward"] <= 1.0, (stage, m, row)


@pytest.mark.slow
def test_small_demo_runs_end_to_end(tmp_path):
    grpo = DemoGRPOConfig(rollouts=2, prompts_per_rollout=8, num_generations=2, max_completion_length=16)
    cfg = demo.DemoConfig(workdir=str(tmp_path), n_train_per_modality=24, n_eval_per_modality=8, steps=20,
                          control=True, max_new_tokens=40, grpo=grpo)
    report = demo.run_demo(cfg)
    _check_rows(report["sft"], "sft")
    _check_rows(report["grpo"], "grpo")
    for m in MODALITIES:
        assert report["sft"][m]["blank_media_accuracy"] == report["control"][m]["accuracy"]  # the control run
    assert set(report["seconds_by_stage"]) == {"data", "sft", "sft_eval", "control", "grpo", "examples"}
    assert report["checkpoint"] == {"reloaded_equal": True, "step": 20}
    # the exported HF checkpoint (LoRA merged) reads back to exactly the trained, merged parameters
    assert report["grpo_checkpoint"]["reloaded_equal"] is True
    assert report["grpo_checkpoint"]["rollouts"] == 2
    assert os.path.isfile(os.path.join(report["grpo_checkpoint"]["export_dir"], "config.json"))
    assert report["grpo_training"]["rollouts"] == 2 and math.isfinite(report["grpo_training"]["last_reward"])
    assert set(report["examples"]) == MODALITIES
    on_disk = json.load(open(os.path.join(tmp_path, "demo_report.json")))
    assert on_disk["sft"] == report["sft"] and on_disk["grpo"] == report["grpo"]
    summary = json.load(open(os.path.join(tmp_path, "data", "shards", "summary.json")))
    assert set(summary["splits"]) >= {"train", "eval", "grpotrain"}  # prep ran for the RL rows too


def test_same_params_sees_a_one_ulp_change():
    """The export check compares bit for bit: a single changed value must make it fail."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from omnirrm_jax.demo_grpo import same_params

    a, b = (nnx.Linear(3, 2, rngs=nnx.Rngs(0)) for _ in range(2))
    assert same_params(a, b)
    k = np.asarray(b.kernel[...]).copy()
    k[0, 0] = np.nextafter(k[0, 0], np.float32(np.inf))
    b.kernel.set_value(jnp.asarray(k))
    assert not same_params(a, b)
    assert not same_params(a, nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0)))
