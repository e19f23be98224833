"""Both metrics from a judgements file and the benchmark's data file, without a model (`omnirrm eval score`).

The data file gives the rows, their order and gold labels; the judgements file the generated texts. The
`reference` metric reads, per row, the judgement in the order the reference script would have shown it
(`benchmarks.reference_order`: "AB", or VL-RewardBench's seeded random order), in the data file's row order (its
seeded fallbacks depend on it). The `omnirrm` metric reads every line. A judgement line for a row index the data file
does not have, or for a different row id, is an error: the two files do not belong together.
"""

from __future__ import annotations

from typing import Any

from omnirrm_jax.eval.benchmarks import BenchRow, Protocol, reference_order
from omnirrm_jax.eval.metrics import omnirrm_metric
from omnirrm_jax.eval.readers import read_benchmark
from omnirrm_jax.eval.reference_metrics import reference_metric
from omnirrm_jax.eval.runner import EvalError, read_lines, row_hash


def index_lines(lines: list[dict], rows: list[BenchRow], proto: Protocol, path: str, *,
                subset: bool = False) -> dict[tuple[int, str], dict]:
    """{(index, order): line}; a later line for the same key wins (a retried error row). `subset`: the rows are the
    first N of the file (--limit), so lines past them are ignored rather than refused."""
    hashes = {r.index: row_hash(r) for r in rows}
    out: dict[tuple[int, str], dict] = {}
    for n, ln in enumerate(lines, 1):
        if ln.get("benchmark") not in (None, proto.name):
            raise EvalError(f"{path} line {n} holds a {ln.get('benchmark')!r} judgement, not {proto.name!r}")
        i = int(ln["index"])
        if i not in hashes:
            if subset:
                continue
            raise EvalError(f"{path} line {n}: row index {i} is not in the data file ({len(rows)} rows read)")
        if ln.get("row_hash") != hashes[i]:
            raise EvalError(f"{path} line {n}: row {i} differs from the data file's row {i}: the judgements belong to "
                            "another data file (or it was edited)")
        key = (i, ln["order"])
        if key in out and not out[key].get("error"):
            continue  # the first judgement of a (row, order) stands, as `runner.resume` keeps it
        out[key] = ln
    return out


def seed_of(lines: list[dict], proto: Protocol, default: int = 0) -> int:
    """The run's seed. Greedy lines of a benchmark shown in stored order do not depend on it, so those may mix."""
    seeds = sorted({ln.get("seed") for ln in lines if ln.get("seed") is not None})
    seeded = proto.order != "stored" or any("greedy" not in (ln.get("decoding") or {}) for ln in lines)
    if len(seeds) > 1 and seeded:
        raise EvalError(f"the judgements mix seeds {seeds}; score each run's file on its own")
    return seeds[0] if seeds else default


def score(proto: Protocol, rows: list[BenchRow], lines: list[dict], *, path: str = "judgements",
          literal_labels: bool = False, bootstrap: int = 1000, subset: bool = False) -> dict[str, Any]:
    """{"benchmark", "rows", "seed", "orders", "judgements", "reference": {...}, "omnirrm": {...}}.

    The omnirrm metric expects both orders of every row unless every line was written by a run of the reference's
    order only (`--orders reference`): then each row's own reference order."""
    keyed = index_lines(lines, rows, proto, path, subset=subset)
    seed = seed_of(list(keyed.values()), proto)
    ref_of = {row.index: reference_order(proto, row.index, seed) for row in rows}
    ref_lines = {i: keyed[(i, o)] for i, o in ref_of.items() if (i, o) in keyed}
    mode = "reference" if keyed and all(ln.get("orders") == "reference" for ln in keyed.values()) else "both"
    expected = {i: ("AB", "BA") if mode == "both" else (o,) for i, o in ref_of.items()}
    return {
        "benchmark": proto.name, "rows": len(rows), "seed": seed, "orders": mode, "judgements": len(keyed),
        "reference": reference_metric(proto.name, rows, ref_lines, literal_labels=literal_labels),
        "omnirrm": omnirrm_metric(rows, keyed, template=proto.template, bootstrap=bootstrap, seed=seed,
                                  categories=proto.name == "mm_rewardbench", expected=expected),
    }


def score_files(proto: Protocol, data: str, judgements: str, *, media_root: str | None = None,
                literal_labels: bool = False, limit: int | None = None) -> dict[str, Any]:
    rows = read_benchmark(proto.name, data, media_root=media_root, limit=limit)
    lines = read_lines(judgements)
    if not lines:
        raise EvalError(f"{judgements} holds no judgement lines")
    return score(proto, rows, lines, path=judgements, literal_labels=literal_labels, subset=limit is not None)
