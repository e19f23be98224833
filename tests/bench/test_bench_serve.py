"""`omnirrm bench serve` runs on CPU with the tiny preset (the GPU numbers are the lead's to measure): the server
in a subprocess driven at two concurrencies, the offline judge beside it, a markdown table and the JSON."""
import json

import pytest

from omnirrm_jax.bench import serve as bench_serve


def test_pairs_are_varied_and_deterministic():
    a, b = bench_serve.make_pairs(8), bench_serve.make_pairs(8)
    assert a == b and len({p["answer_a"] for p in a}) > 4


@pytest.mark.slow
def test_bench_serve_tiny_smoke(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert bench_serve.main(["--preset", "tiny", "--requests", "16", "--concurrency", "1", "4", "--max-batch", "4",
                             "--new", "48", "--max-prompt-tokens", "512", "--warmup", "none",
                             "--single-requests", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [s["concurrency"] for s in res["served"]] == [1, 4]
    assert [s["judgements"] for s in res["served"]] == [4, 16]
    assert all(s["judgements_per_s"] > 0 and s["p99_s"] >= s["p50_s"] for s in res["served"])
    assert res["compiles_while_timed"] == 0 and res["warm_pass_s"] > 0
    assert res["offline"]["judgements"] == 16 and res["offline"]["judgements_per_s"] > 0
    printed = capsys.readouterr().out
    assert "| clients | judgements/s |" in printed and "offline batch judge" in printed
