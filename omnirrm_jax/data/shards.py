"""Record shard files of a run: glob patterns -> the shard paths, and how many records they hold."""

from __future__ import annotations

import glob


def expand_paths(patterns) -> list[str]:
    """Each glob pattern -> its sorted matches; a pattern that matches nothing is an error naming it."""
    out = []
    for p in patterns:
        hits = sorted(glob.glob(p))
        if not hits:
            raise FileNotFoundError(f"no data shards match {p!r}")
        out.extend(hits)
    return out


def count_records(paths: list[str]) -> int:
    import grain

    return len(grain.sources.ArrayRecordDataSource(list(paths)))
