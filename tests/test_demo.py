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
    assert list(report)[:2] == ["environment", "seed"] and report["environment"]["packages"]["jax"]
    # 20 steps learn nothing: the criteria say so in words, and the report's verdict is a fail
    assert report["passed"] is False
    assert {"passed": False, "check": f"SFT image: held-out accuracy {report['sft']['image']['accuracy']:.2f} "
            "(needs >= 0.9)"} in report["criteria"]
    on_disk = json.load(open(os.path.join(tmp_path, "demo_report.json")))
    assert on_disk["sft"] == report["sft"] and on_disk["grpo"] == report["grpo"]
    rl_rows = [json.loads(line) for line in open(os.path.join(tmp_path, "data", "grporl.jsonl"))]
    assert len(rl_rows) == 10 and all("solution" in r for r in rl_rows)  # prompts with their gold judgements


@pytest.mark.slow
def test_demo_sft_perceives_every_modality(tmp_path):
    """Issue 20's regression guard, in CI: the demo's own SFT run (default settings, seed 0; no control training,
    no GRPO, so about a third of the demo) must learn every modality. Its judge is evaluated on the held-out set
    and on the same set with the media blanked: each media modality must beat its blanked-media score by a wide
    margin, and the arithmetic must be learned beyond chance. A demo whose images stay at chance, as they did on a newcomer's
    machine, fails here. (A 400-step run learned no modality at all: the verdict token needs the full schedule.)"""
    from omnirrm_jax.demo import evaluate as E
    from omnirrm_jax.demo import sft as demo_sft
    from omnirrm_jax.demo.data import prepare_data, train_tokenizer

    cfg = demo.DemoConfig(workdir=str(tmp_path), control=False, grpo=None)
    real = prepare_data(cfg, "data")
    tok, tok_path = train_tokenizer(cfg, real.root)
    out, _ = demo_sft.train(cfg, real, tok_path, "sft")
    model, thinker_cfg = out["state"].model(), out["thinker_config"]
    seen = E.evaluate(model, tok, thinker_cfg, real.shards, cfg)
    blank = E.evaluate(model, tok, thinker_cfg, prepare_data(cfg, "data_blank", blank=True).shards, cfg)
    for m in ("image", "video", "audio"):
        assert seen[m]["accuracy"] >= 0.8, (m, seen[m])
        assert seen[m]["accuracy"] >= blank[m]["accuracy"] + 0.3, (m, seen[m], blank[m])
    # text has no media to blank; 0.65 is above chance with margin (seed 1 of this demo reached only 0.79 on one
    # machine: the arithmetic is the modality this run learns last)
    assert seen["text"]["accuracy"] >= 0.65, seen["text"]


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



def _report(acc, control=None, grpo=None, first=0.5, last=0.8, reward=None):
    row = lambda a: {"accuracy": a, "valid_json": 1.0, "mean_reward": reward if reward is not None else a, "n": 48,
                     "blank_media_accuracy": None}
    r = {"seed": 0, "sft": {m: row(a) for m, a in zip(sorted(MODALITIES), acc)}}
    if control is not None:
        r["control"] = {m: {"accuracy": a} for m, a in zip(sorted(MODALITIES), control)}
    if grpo is not None:
        r["grpo"] = {m: row(a) for m, a in zip(sorted(MODALITIES), grpo)}
        r["grpo_training"] = {"first_reward": first, "last_reward": last}
    return r


def test_criteria_name_the_failing_modality_and_threshold():
    from omnirrm_jax.demo import criteria

    # sorted(MODALITIES): audio, image, text, video
    ok = criteria.check(_report([1.0, 1.0, 0.94, 1.0], control=[0.5] * 4, grpo=[1.0, 1.0, 0.98, 1.0]))
    assert all(passed for passed, _ in ok) and len(ok) == 4 + 3 + 4 + 2
    bad = criteria.check(_report([1.0, 0.52, 0.94, 1.0], control=[0.5, 0.75, 0.9, 0.5], grpo=[1.0, 0.52, 0.9, 1.0],
                                 first=0.9, last=0.9))
    failed = [text for passed, text in bad if not passed]
    assert failed == ["SFT image: held-out accuracy 0.52 (needs >= 0.9)",
                      "control image: accuracy on blanked media 0.75 (needs <= 0.6)",
                      "GRPO text: held-out accuracy 0.94 -> 0.90 (must not fall)",
                      "GRPO: mean held-out reward 0.865 -> 0.855 (must not fall)",
                      "GRPO: mean training-rollout reward 0.900 (first rollouts) -> 0.900 (last) (must rise)"]
    assert "FAIL SFT image" in criteria.lines(bad) and "PASS SFT audio" in criteria.lines(bad)
    # started at the ceiling: nothing to raise; the training reward may only wobble by sampling noise
    solved = _report([1.0] * 4, grpo=[1.0] * 4, first=0.998, last=0.995)
    assert all(passed for passed, _ in criteria.check(solved))
    solved["grpo_training"]["last_reward"] = 0.97
    assert not all(passed for passed, _ in criteria.check(solved))
    # text has no media: a high text number on the control run is no failure of perception
    assert all(passed for passed, _ in criteria.check(_report([1.0] * 4, control=[0.5, 0.5, 1.0, 0.5])))


def test_seed_table_min_median_max_and_fails():
    from omnirrm_jax.demo import criteria, seeds

    reports = []
    for seed, image in enumerate([1.0, 0.5, 0.96]):
        r = _report([1.0, image, 1.0, 1.0], control=[0.5] * 4, grpo=[1.0, image, 1.0, 1.0])
        r.update(seed=seed, seconds=700.0 + seed)
        r["criteria"] = [{"passed": p, "check": t} for p, t in criteria.check(r)]
        reports.append(r)
    text = seeds.table(reports)
    assert "| 3 seeds (0, 1, 2): min / median / max | text | image | video | audio |" in text
    assert "| SFT accuracy | 1.00 | 0.50 / 0.96 / 1.00 | 1.00 | 1.00 |" in text
    assert "control (blanked media)" not in text  # no blank_media_accuracy in these rows: no such row
    assert "seed 1: SFT image: held-out accuracy 0.50 (needs >= 0.9)" in text
    reports[1]["sft"]["image"]["accuracy"] = 0.95  # checked again from the numbers, not the stored lines
    assert "seed 1: SFT image" not in seeds.table(reports)
    assert "seconds by the demo's clock: 700 / 701 / 702" in text


def test_a_rerun_starts_clean_and_removes_only_the_demos_own_outputs(tmp_path):
    """A rerun resumed the old SFT checkpoint while it printed "from random weights": now it removes what an earlier
    demo run wrote (and nothing else) and starts again; a folder that was never a demo workdir is refused."""
    from omnirrm_jax.demo import workdir as W
    from omnirrm_jax.errors import UserError

    used = tmp_path / "used"
    (used / "sft" / "checkpoints" / "1000").mkdir(parents=True)
    (used / "data" / "shards").mkdir(parents=True)
    (used / "tokenizer.model").write_bytes(b"sp")
    (used / "demo_report.json").write_text("{}")
    (used / "my_notes.txt").write_text("mine")
    (used / "my_runs").mkdir()
    assert W.start_clean(str(used)) == ["data", "tokenizer.model", "sft", "demo_report.json"]
    assert sorted(os.listdir(used)) == [W.MARKER, "my_notes.txt", "my_runs"]
    (used / "grpo").mkdir()  # a later run, interrupted before its report: the marker says whose folder it is
    assert W.start_clean(str(used)) == ["grpo"]
    stranger = tmp_path / "project"
    (stranger / "data").mkdir(parents=True)
    with pytest.raises(UserError, match="holds data but is not a demo workdir"):
        W.start_clean(str(stranger))
    assert os.listdir(stranger) == ["data"]
    assert W.start_clean(str(tmp_path / "new")) == [] and os.listdir(tmp_path / "new") == [W.MARKER]


@pytest.mark.slow
def test_rerunning_the_demo_reproduces_it(tmp_path, capsys):
    cfg = demo.DemoConfig(workdir=str(tmp_path), n_train_per_modality=4, train_mix=(1, 1, 1, 1), n_eval_per_modality=2,
                          steps=3, batch_size=8, control=False, max_new_tokens=8, grpo=None)
    first = demo.run_demo(cfg)
    capsys.readouterr()
    second = demo.run_demo(cfg)
    out = capsys.readouterr().out
    assert f"starting clean: removed the earlier demo run's data, tokenizer.model, sft, demo_report.json from " \
           f"{tmp_path}" in out and "SFT of a tiny thinker from random weights (3 steps)" in out
    steps = [json.loads(line)["step"] for line in open(tmp_path / "sft" / "metrics.jsonl")]
    assert steps == [3]  # one run's log line, not a resumed one's after the old ones
    assert second["sft"] == first["sft"] and second["checkpoint"] == first["checkpoint"] == {"reloaded_equal": True,
                                                                                           "step": 3}
