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
from omnirrm_jax.eval.runner import EvalError, read_lines


def index_lines(lines: list[dict], rows: list[BenchRow], proto: Protocol, path: str) -> dict[tuple[int, str], dict]:
    """{(index, order): line}; a later line for the same key wins (a retried error row)."""
    by_index = {r.index: r for r in rows}
    out: dict[tuple[int, str], dict] = {}
    for n, ln in enumerate(lines, 1):
        if ln.get("benchmark") not in (None, proto.name):
            raise EvalError(f"{path} line {n} holds a {ln.get('benchmark')!r} judgement, not {proto.name!r}")
        i = int(ln["index"])
        row = by_index.get(i)
        if row is None:
            raise EvalError(f"{path} line {n}: row index {i} is not in the data file ({len(rows)} rows read)")
        if ln.get("row_id") != (None if row.id is None else str(row.id)):
            raise EvalError(f"{path} line {n}: row {i} has id {ln.get('row_id')!r} there but {row.id!r} in the data "
                            "file: the judgements belong to another data file")
        out[(i, ln["order"])] = ln
    return out


def seed_of(lines: list[dict], default: int = 0) -> int:
    seeds = {ln.get("seed") for ln in lines if ln.get("seed") is not None}
    if len(seeds) > 1:
        raise EvalError(f"the judgements mix seeds {sorted(seeds)}; score each run's file on its own")
    return seeds.pop() if seeds else default


def score(proto: Protocol, rows: list[BenchRow], lines: list[dict], *, path: str = "judgements",
          literal_labels: bool = False, bootstrap: int = 1000) -> dict[str, Any]:
    """{"benchmark", "rows", "seed", "reference": {...}, "omnirrm": {...}}."""
    from omnirrm_jax.eval.metrics import omnirrm_metric
    from omnirrm_jax.eval.reference_metrics import reference_metric

    keyed = index_lines(lines, rows, proto, path)
    seed = seed_of(lines)
    ref_lines = {}
    for row in rows:
        ln = keyed.get((row.index, reference_order(proto, row.index, seed)))
        if ln is not None:
            ref_lines[row.index] = ln
    return {
        "benchmark": proto.name, "rows": len(rows), "seed": seed, "judgements": len(keyed),
        "reference": reference_metric(proto.name, rows, ref_lines, literal_labels=literal_labels),
        "omnirrm": omnirrm_metric(rows, keyed, template=proto.template, bootstrap=bootstrap, seed=seed,
                                  categories=proto.name == "mm_rewardbench"),
    }


def score_files(proto: Protocol, data: str, judgements: str, *, media_root: str | None = None,
                literal_labels: bool = False, limit: int | None = None) -> dict[str, Any]:
    from omnirrm_jax.eval.readers import read_benchmark

    rows = read_benchmark(proto.name, data, media_root=media_root, limit=limit)
    lines = read_lines(judgements)
    if not lines:
        raise EvalError(f"{judgements} holds no judgement lines")
    return score(proto, rows, lines, path=judgements, literal_labels=literal_labels)
