"""`omnirrm eval score` on the real released excerpts, with judgements written here by a judge that always prefers the
answer it is shown first: the numbers follow from the excerpts' label counts alone, so they are worked out by hand."""
import json

from omnirrm_jax import cli
from omnirrm_jax.eval import benchmarks as B
from omnirrm_jax.eval import runner
from omnirrm_jax.rubric import format_judgement
from tests.eval.test_readers import SHARED, needs_shared

FIRST = format_judgement(8, 3, "A", "Fluency: A reads better.")  # "the first answer shown is better"


def _judge_all(bench, data, path, orders=("AB", "BA")):
    from omnirrm_jax.eval.readers import read_benchmark

    proto, opts = B.protocol(bench), runner.RunOptions()
    with open(path, "w") as f:
        for row in read_benchmark(bench, str(data)):
            for o in orders:
                f.write(json.dumps(runner._line(proto, row, o, opts, output=FIRST,
                                                probs={"A": 0.7, "B": 0.2, "equal": 0.1})) + "\n")


def _rescore(tmp_path, bench, data) -> dict:
    _judge_all(bench, data, tmp_path / "j.jsonl")
    out = tmp_path / "s.json"
    assert cli.main(["eval", "score", bench, "--data", str(data), "--judgements", str(tmp_path / "j.jsonl"),
                     "--json", str(out)]) == 0
    return json.loads(out.read_text())


@needs_shared
def test_rescore_mm_rewardbench_excerpt(tmp_path, capsys):
    # 120 rows: Better is Output1 in 72, Output2 in 48 (reader tests). Shown first = A in AB order, B in BA order.
    # reference (AB lines): final_verdict [[A]] on every row -> 72 / 120 = 0.6.
    # omnirrm: AB right on 72 rows, BA (verdict "A" shown = B stored) right on 48 -> mean (72 + 48) / 2 / 120 = 0.5;
    # the two orders never agree -> swap consistency 0; the reward (0.7 - 0.2 shown, un-swapped in BA) averages 0.
    rep = _rescore(tmp_path, "mm_rewardbench", SHARED / "mm_rewardbench_excerpt.json")
    assert rep["reference"]["accuracy"] == 0.6 and rep["reference"]["n"] == 120
    assert rep["reference"]["random_fallbacks"] == 0
    o = rep["omnirrm"]
    assert (o["accuracy"], o["accuracy_ab"], o["accuracy_ba"]) == (0.5, 0.6, 0.4)
    assert o["swap_consistency"] == 0.0 and o["n_consistency"] == 120 and o["parse_failure_rate"] == 0.0
    assert o["reward_accuracy"] == 0.0  # r = 0 on every row: no sign, wrong
    assert sum(c["n"] for c in rep["reference"]["by_category"].values()) == 120


@needs_shared
def test_rescore_hh_excerpt(tmp_path, capsys):
    # 2000 rows, label 0 (A) in 994, 1 (B) in 1006. reference: better "A" everywhere -> 994 / 2000 = 0.497, and the
    # scores (8 > 3) say A too -> 0.497. omnirrm: AB 0.497, BA 0.503, mean 0.5.
    rep = _rescore(tmp_path, "hh_rlhf", SHARED / "hh_rlhf_2000.jsonl")
    assert rep["reference"]["accuracy"] == 0.497 and rep["reference"]["accuracy_scores"] == 0.497
    assert rep["reference"]["n"] == 2000
    o = rep["omnirrm"]
    assert (o["accuracy_ab"], o["accuracy_ba"], o["accuracy"]) == (0.497, 0.503, 0.5)
    assert o["ci95"] == [0.5, 0.5]  # every row scores exactly 0.5 (one order right, one wrong): no spread
