"""The judgements file without a model: a partial last line is cut, error lines are dropped for a retry, duplicates
never survive, a file of another benchmark / seed / data file is refused; the order each row is judged in; the
suite config's checks; the report's table and chart from scores alone."""
import json

import pytest

from omnirrm_jax.eval import benchmarks as B
from omnirrm_jax.eval import report, runner, score, suite
from omnirrm_jax.rubric import format_judgement
from omnirrm_jax.eval.runner import EvalError, RunOptions

HH = B.protocol("hh_rlhf")


def _rows(n, text="q"):
    return [B.BenchRow(index=i, fields={"text_prompt": f"{text}{i}"}, question=f"{text}{i}", answer_a="a",
                       answer_b="b", label="A") for i in range(n)]


def _line(row, order, *, opts=RunOptions(), proto=HH, **kw):
    return runner._line(proto, row, order, opts, output="x", **kw)


def _write(path, lines, tail=b""):
    path.write_bytes(b"".join(json.dumps(ln).encode() + b"\n" for ln in lines) + tail)


def test_partial_last_line_is_cut_and_errors_are_retried(tmp_path):
    p = tmp_path / "j.jsonl"
    rows = _rows(2)
    err = {"reason": "missing_file", "detail": "x"}
    _write(p, [_line(rows[0], "AB"), _line(rows[0], "BA"), _line(rows[1], "AB", error=err),
               _line(rows[1], "BA", error=err), _line(rows[0], "AB")], tail=b'{"benchmark": "hh_rl')
    assert len(runner.read_lines(str(p))) == 5
    done = runner.resume(str(p), rows, HH, RunOptions())
    assert done == {(0, "AB"), (0, "BA")}  # the error row is to be judged again
    kept = runner.read_lines(str(p))
    assert [(ln["index"], ln["order"]) for ln in kept] == [(0, "AB"), (0, "BA")]  # no duplicate, no error line
    assert p.read_bytes().endswith(b"\n")


def test_a_fixed_media_root_heals_a_run(tmp_path):
    """Rows that failed for a missing file are the same rows once the file is found: their error lines are retried,
    not mistaken for another data file's."""
    p = tmp_path / "j.jsonl"
    rows = _rows(2)
    broken = [B.BenchRow(**{**r.__dict__, "error": ("missing_file", f"/old/root/{r.index}.mp4")}) for r in rows]
    _write(p, [runner._line(HH, r, o, RunOptions(), error={"reason": "missing_file", "detail": r.error[1]})
               for r in broken for o in ("AB", "BA")])
    assert runner.resume(str(p), rows, HH, RunOptions()) == set()
    assert runner.read_lines(str(p)) == []


def test_a_corrupt_complete_last_line_is_cut_too(tmp_path):
    p = tmp_path / "j.jsonl"
    rows = _rows(1)
    _write(p, [_line(rows[0], "AB")], tail=b'{"benchmark": "hh_rlhf", "ind\n')
    assert runner.resume(str(p), rows, HH, RunOptions()) == {(0, "AB")}
    with open(p, "a") as f:  # a later run appends after it ...
        f.write(json.dumps(_line(rows[0], "BA")) + "\n")
    assert len(runner.read_lines(str(p))) == 2  # ... and the file stays readable


def test_a_bad_line_before_the_last_is_refused(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"index": 0, "order": "AB"}\nnot json\n{"index": 1, "order": "AB"}\n')
    with pytest.raises(EvalError, match="line 2"):
        runner.read_lines(str(p))


def test_another_runs_file_is_refused(tmp_path):
    p = tmp_path / "j.jsonl"
    rows, other = _rows(1), _rows(1, text="other question ")
    vl = B.protocol("vl_rewardbench")
    cases = [([_line(rows[0], "AB", proto=B.protocol("sharegpt_video"))], HH, RunOptions(), "holds 'sharegpt_video'"),
             ([_line(other[0], "AB")], HH, RunOptions(), "another data file"),  # rows without ids are told apart
             ([_line(rows[0], "AB", opts=RunOptions(max_new_tokens=64))], HH, RunOptions(), "decoding"),
             ([_line(rows[0], "AB", proto=vl, opts=RunOptions(seed=5))], vl, RunOptions(), "seed 5"),
             ([_line(rows[0], "AB")], HH, RunOptions(orders="reference"), "--orders both"),
             ([_line(rows[0], "AB", opts=RunOptions(model="/ckpt/x"))], HH, RunOptions(model="/ckpt/y"),
              "judged by /ckpt/x")]
    for lines, proto, opts, match in cases:
        _write(p, lines)
        with pytest.raises(EvalError, match=match):
            runner.resume(str(p), rows, proto, opts)
    _write(p, [_line(rows[0], "AB", opts=RunOptions(seed=5))])  # greedy, stored order: the seed changes nothing
    assert runner.resume(str(p), rows, HH, RunOptions()) == {(0, "AB")}
    _write(p, [_line(rows[0], "AB")])  # lines from before the model was recorded: resumed
    assert runner.resume(str(p), rows, HH, RunOptions(model="/ckpt/y")) == {(0, "AB")}
    _write(p, [_line(rows[0], "AB", opts=RunOptions(orders="reference"))])  # reference -> both: extended
    assert runner.resume(str(p), rows, HH, RunOptions()) == {(0, "AB")}


def test_a_training_workdir_is_identified_with_its_newest_step(tmp_path):
    (tmp_path / "checkpoints" / "100").mkdir(parents=True)
    (tmp_path / "checkpoints" / "200.orbax-checkpoint-tmp-1").mkdir()
    before = runner.model_identity(str(tmp_path), dtype="bfloat16")
    assert before.endswith("@step100 dtype=bfloat16")
    (tmp_path / "checkpoints" / "200").mkdir()
    assert runner.model_identity(str(tmp_path), dtype="bfloat16") != before  # more training: another judge


def test_embedded_media_are_named_by_content(tmp_path):
    a = B.BenchRow(index=0, embedded={"images": [b"\x89PNG one"]})
    b = B.BenchRow(index=0, embedded={"images": [b"\x89PNG two"]})
    pa, pb = runner._materialise(a, str(tmp_path)), runner._materialise(b, str(tmp_path))
    assert pa["images"][0] != pb["images"][0] and pa["images"][0].endswith(".png")
    assert (tmp_path / pb["images"][0]).read_bytes() == b"\x89PNG two"


def test_limited_scoring_ignores_lines_past_the_rows():
    rows = _rows(3)
    lines = [_line(r, o) for r in rows for o in ("AB", "BA")]
    with pytest.raises(EvalError, match="not in the data file"):
        score.score(HH, rows[:2], lines)
    assert score.score(HH, rows[:2], lines, subset=True)["judgements"] == 4


def test_reference_order_runs_are_scored_per_row():
    """A VL-RewardBench run of the reference's orders only: each row was shown once, some AB, some BA; a judge right
    every time scores 1.0 on both metrics, with nothing missing."""
    vl = B.protocol("vl_rewardbench")
    opts = RunOptions(orders="reference", seed=1)
    rows = [B.BenchRow(index=i, fields={"id": i, "human_ranking": [0, 1] if i % 3 else [1, 0]}, question="q",
                       answer_a="a", answer_b="b",
                       label="A" if i % 3 else "B") for i in range(12)]
    lines = []
    for r in rows:
        (order,) = runner.row_orders(vl, r, opts)
        shown = r.label if order == "AB" else B.swap_label(r.label)
        s = 8 if shown == "A" else 2
        lines.append(runner._line(vl, r, order, opts, output=format_judgement(s, 10 - s, shown, "fine")))
    assert {ln["order"] for ln in lines} == {"AB", "BA"}
    res = score.score(vl, rows, lines)
    assert res["orders"] == "reference" and res["reference"]["accuracy"] == 1.0
    assert res["omnirrm"]["accuracy"] == 1.0 and res["omnirrm"]["missing"] == 0


def test_orders_per_row():
    vl = B.protocol("vl_rewardbench")
    rows = _rows(40)
    both = RunOptions(orders="both")
    ref = RunOptions(orders="reference", seed=7)
    assert all(runner.row_orders(vl, r, both) == ("AB", "BA") for r in rows)
    shown = [runner.row_orders(vl, r, ref)[0] for r in rows]
    assert set(shown) == {"AB", "BA"}  # a seeded coin per row ...
    assert shown == [B.reference_order(vl, r.index, 7) for r in rows]  # ... that score.py reads back
    assert all(runner.row_orders(HH, r, ref) == ("AB",) for r in rows)


def test_decoding_follows_the_protocol_and_the_overrides():
    vl = B.protocol("vl_rewardbench")
    assert runner.decoding(HH, RunOptions()) == (2048, None)
    assert runner.decoding(vl, RunOptions()) == (4096, {"temperature": 0.7, "top_p": 0.9})
    assert runner.decoding(vl, RunOptions(greedy=True, max_new_tokens=64)) == (64, None)
    assert runner.decoding(vl, RunOptions(temperature=0)) == (4096, None)  # temperature 0 = greedy
    assert runner.decoding(vl, RunOptions(temperature=1.0, top_p=0.5)) == (4096, {"temperature": 1.0, "top_p": 0.5})
    assert runner.decoding(HH, RunOptions(temperature=0.5)) == (2048, {"temperature": 0.5, "top_p": 1.0})


def test_suite_config_checks(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {checkpoint: ck}\nbenchmarks: {hh_rlhf: {data: hh.jsonl}}\n")
    c = suite.load_config(str(cfg))
    assert c["benchmarks"]["hh_rlhf"]["data"] == str(tmp_path / "hh.jsonl")
    assert c["model"]["checkpoint"] == str(tmp_path / "ck")
    for text, match in [("model: {checkpoint: ck}\nbenchmarks: {hh: {data: x}}\n", "unknown key"),
                        ("model: {}\nbenchmarks: {hh_rlhf: {data: x}}\n", "checkpoint is required"),
                        ("model: {checkpoint: c}\nrun: {batch: 3}\nbenchmarks: {hh_rlhf: {data: x}}\n", "run"),
                        ("model: {checkpoint: c}\nbenchmarks: {hh_rlhf: {}}\n", "data is required"),
                        ("model: [\n", "not valid YAML")]:
        cfg.write_text(text)
        with pytest.raises(suite.SuiteConfigError, match=match):
            suite.load_config(str(cfg))


def test_report_table_and_chart(tmp_path):
    def s(ref, own):
        return {"rows": 10, "reference": {"accuracy": ref, "n": 9}, "omnirrm": {
            "accuracy": own, "ci95": [own - 0.1, own + 0.1], "accuracy_ab": own, "accuracy_ba": own,
            "swap_consistency": 0.5, "reward_accuracy": 0.6, "parse_failure_rate": 0.0, "errors": {}, "missing": 0}}
    scores = {c: s(0.6, 0.5) for c in B.PUBLISHED_COLUMNS}
    rows = report.model_rows("m", scores)
    assert rows["m (reference)"]["overall"] == pytest.approx(0.6) and rows["m (omnirrm)"]["overall"] == 0.5
    del scores["ta2t"]  # four of five: no overall
    md = report.markdown("m", scores, {"seed": 0})
    assert "| **m (reference)** | 60.0 | 60.0 | 60.0 | 60.0 | - | - |" in md
    assert "| Gemini-2.5-Pro | 79.6 | 63.3 | 78.8 | 66.5 | 64.9 | 70.6 |" in md
    report.chart("m", scores, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_an_empty_question_is_judged_not_refused():
    from omnirrm_jax.eval import pairs

    row = B.BenchRow(index=0, question="", answer_a="a", answer_b="b", label="A")
    pair = pairs.check_pair(runner.to_pair(HH, row, {}))
    assert pair["question"] == ""
    mm = B.BenchRow(index=0, question=None, answer_a="a", answer_b="b", images=["x.png"], label="A")
    assert pairs.check_pair(runner.to_pair(B.protocol("mm_rewardbench"), mm, {}))["question"] == "None"


def test_scoring_keeps_the_first_judgement_of_a_row_as_resume_does(tmp_path):
    """After two runs appended to one file, `resume` keeps each (row, order)'s first judgement; scoring must count
    the same one, or a no-op resume could change the score."""
    rows = _rows(1)
    first, second = _line(rows[0], "AB"), _line(rows[0], "AB")
    first["marker"], second["marker"] = 1, 2
    err = {**_line(rows[0], "BA"), "error": {"reason": "x"}}
    fixed = _line(rows[0], "BA")
    got = score.index_lines([first, second, err, fixed], rows, HH, "j.jsonl")
    assert got[(0, "AB")]["marker"] == 1 and not got[(0, "BA")].get("error")
