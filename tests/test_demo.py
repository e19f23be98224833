"""The demo path end to end at a small size: data -> prep -> tokenizer -> SFT -> checkpoint reload ->
per-modality evaluation -> GRPO (LoRA) -> merged export reloaded -> evaluation -> report. (The full-size demo's
accuracy and reward claims are measured by `omnirrm demo` and kept in docs/RESULTS.md.)"""
import json
import math
import os

import pytest

from omnirrm_jax import demo
from omnirrm_jax.demo import DemoGRPOConfig

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
    grpo = DemoGRPOConfig(rollouts=2, prompts_per_rollout=8, num_generations=2, max_completion_length=16,
                          probe_per_modality=(4, 2, 2, 2), probe_generations=2)
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
    training = report["grpo_training"]
    assert training["rollouts"] == 2 and math.isfinite(training["last_reward"])
    # the probe judged 4 arithmetic + 2 per media modality distinct train prompts; 16-token judgements never
    # parse, so nothing is contested or solved and the RL split falls back to all 10 of them
    assert training["prompts"]["probed"] == {"text": 4, "image": 2, "video": 2, "audio": 2}
    assert training["prompts"]["rows"] == 10, training["prompts"]
    assert set(training["seconds"]) == {"probe", "train", "export"}
    assert set(report["examples"]) == MODALITIES
    on_disk = json.load(open(os.path.join(tmp_path, "demo_report.json")))
    assert on_disk["sft"] == report["sft"] and on_disk["grpo"] == report["grpo"]
    rl_rows = [json.loads(line) for line in open(os.path.join(tmp_path, "data", "grporl.jsonl"))]
    assert len(rl_rows) == 10 and all("solution" in r for r in rl_rows)  # prompts with their gold judgements


def test_same_params_sees_a_one_ulp_change():
    """The export check compares bit for bit: a single changed value must make it fail."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from omnirrm_jax.demo.grpo import same_params

    a, b = (nnx.Linear(3, 2, rngs=nnx.Rngs(0)) for _ in range(2))
    assert same_params(a, b)
    k = np.asarray(b.kernel[...]).copy()
    k[0, 0] = np.nextafter(k[0, 0], np.float32(np.inf))
    b.kernel.set_value(jnp.asarray(k))
    assert not same_params(a, b)
    assert not same_params(a, nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0)))


def _rl_cfg(**kw):
    return DemoGRPOConfig(anchors=(2, 1, 1, 1), contested_repeat=3, **kw)


def test_rl_split_repeats_contested_keeps_anchors_drops_hopeless():
    """Contested prompts x3, at most `anchors[m]` solved ones per modality; a prompt whose samples all earned the
    same imperfect reward (no advantage, not solved) is left out."""
    import numpy as np

    from omnirrm_jax.demo.grpo import choose_rl_rows

    mods = ["text", "text", "text", "text", "image", "image", "audio"]
    spread = np.array([0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2])
    solved = np.array([False, True, True, True, True, True, False])
    chosen, counts = choose_rl_rows(mods, spread, solved, _rl_cfg())
    assert chosen == [0, 0, 0, 1, 2, 4, 6, 6, 6]
    assert counts == {"contested": {"text": 1, "audio": 1}, "anchors": {"text": 2, "image": 1}}
    hopeless = np.zeros(3)
    chosen, _ = choose_rl_rows(["text"] * 3, hopeless, np.array([False, True, False]), _rl_cfg())
    assert chosen == [1]  # the two unsolved, uncontested prompts carry no signal


def test_rl_split_falls_back_to_every_probed_prompt():
    """An untrained judge (nothing contested, nothing solved) still gets an RL split: every probed prompt once."""
    import numpy as np

    from omnirrm_jax.demo.grpo import choose_rl_rows

    chosen, counts = choose_rl_rows(["text", "image"], np.zeros(2), np.zeros(2, bool), _rl_cfg())
    assert chosen == [0, 1] and counts == {"contested": {}, "anchors": {}}


def test_distinct_prompts_per_modality():
    from omnirrm_jax.demo.grpo import distinct_prompts

    def row(q, **media):
        return {"messages": [{"role": "user", "content": q}], **media}

    rows = [row("1+1"), row("1+1"), row("1+2"), row("1+3"), row("img", images=["a.png"]),
            row("img", images=["b.png"]), row("img", images=["a.png"]), row("vid", videos=["v.mp4"])]
    pool = distinct_prompts(rows, (2, 5, 0, 1))
    assert pool == [rows[0], rows[2], rows[4], rows[5]]  # repeats dropped, text capped at 2, no video


def test_demo_package_is_light_and_acyclic():
    """Importing the demo package (any submodule first) loads no JAX: the stages import it when they run."""
    import subprocess
    import sys

    for first in ("omnirrm_jax.demo", "omnirrm_jax.demo.grpo", "omnirrm_jax.demo.runner", "omnirrm_jax.demo.data"):
        code = f"import sys, {first}, omnirrm_jax.demo as d; assert d.run_demo and 'jax' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True)

