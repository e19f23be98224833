"""The judgements file without a model: a partial last line is cut, error lines are dropped for a retry, duplicates
never survive, a file of another benchmark / seed / data file is refused; the order each row is judged in; the
suite config's checks; the report's table and chart from scores alone."""
import json

import pytest

from omnirrm_jax.eval import benchmarks as B
from omnirrm_jax.eval import report, runner, suite
from omnirrm_jax.eval.runner import EvalError, RunOptions

HH = B.protocol("hh_rlhf")


def _rows(n, ids=None):
    return [B.BenchRow(index=i, id=None if ids is None else ids[i], question="q", answer_a="a", answer_b="b",
                       label="A") for i in range(n)]


def _line(i, order, *, error=None, seed=0, bench="hh_rlhf", row_id=None):
    return {"benchmark": bench, "index": i, "row_id": row_id, "order": order, "seed": seed, "output": "x",
            "error": error, "probs": None}


def _write(path, lines, tail=b""):
    path.write_bytes(b"".join(json.dumps(ln).encode() + b"\n" for ln in lines) + tail)


def test_partial_last_line_is_cut_and_errors_are_retried(tmp_path):
    p = tmp_path / "j.jsonl"
    err = {"reason": "missing_file", "detail": "x"}
    _write(p, [_line(0, "AB"), _line(0, "BA"), _line(1, "AB", error=err), _line(1, "BA", error=err), _line(0, "AB")],
           tail=b'{"benchmark": "hh_rl')
    assert len(runner.read_lines(str(p))) == 5
    done = runner.resume(str(p), _rows(2), HH, 0)
    assert done == {(0, "AB"), (0, "BA")}  # the error row is to be judged again
    kept = runner.read_lines(str(p))
    assert [(ln["index"], ln["order"]) for ln in kept] == [(0, "AB"), (0, "BA")]  # no duplicate, no error line
    assert p.read_bytes().endswith(b"\n")


def test_a_bad_line_before_the_last_is_refused(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"index": 0, "order": "AB"}\nnot json\n{"index": 1, "order": "AB"}\n')
    with pytest.raises(EvalError, match="line 2"):
        runner.read_lines(str(p))


@pytest.mark.parametrize("line, match", [
    (_line(0, "AB", bench="sharegpt_video"), "holds 'sharegpt_video'"),
    (_line(0, "AB", seed=5), "seed 5"),
    (_line(0, "AB", row_id="other"), "another data file"),
])
def test_another_runs_file_is_refused(tmp_path, line, match):
    p = tmp_path / "j.jsonl"
    _write(p, [line])
    with pytest.raises(EvalError, match=match):
        runner.resume(str(p), _rows(1), HH, 0)


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
    assert runner.decoding(HH, RunOptions()) == (2048, None)
    assert runner.decoding(B.protocol("vl_rewardbench"), RunOptions()) == (4096, {"temperature": 0.7, "top_p": 0.9})
    assert runner.decoding(B.protocol("vl_rewardbench"), RunOptions(greedy=True, max_new_tokens=64)) == (64, None)


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
