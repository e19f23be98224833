"""Record shard files of a run: glob patterns -> the shard paths, and how many records they hold."""

from __future__ import annotations

import glob

from omnirrm_jax.errors import UserError


class ShardError(UserError):
    """A record shard cannot be read (corrupt or truncated); the message names the file, so it can be made again."""


def expand_paths(patterns) -> list[str]:
    """Each glob pattern -> its sorted matches; a pattern that matches nothing is an error naming it."""
    out = []
    for p in patterns:
        hits = sorted(glob.glob(p))
        if not hits:
            raise FileNotFoundError(f"no data shards match {p!r}")
        out.extend(hits)
    return out


def open_shards(paths):
    """One Grain data source over the ArrayRecord shards `paths`. Why not the bare constructor: Riegeli's error for a
    corrupt or truncated shard names no file, so on failure each shard is opened on its own and the bad one named."""
    import grain

    paths = [str(p) for p in paths]
    try:
        return grain.sources.ArrayRecordDataSource(paths)
    except Exception as err:  # noqa: BLE001 - Riegeli raises RuntimeError, ValueError, OSError...
        from array_record.python.array_record_module import ArrayRecordReader

        for p in paths:
            try:
                reader = ArrayRecordReader(p)
                try:
                    reader.num_records()
                finally:
                    reader.close()
            except Exception as e:  # noqa: BLE001
                raise ShardError(f"record shard {p} cannot be read (corrupt or truncated?): {type(e).__name__}: "
                                 f"{e}; prepare it again (omnirrm prep) or leave it out") from err
        raise


def count_records(paths: list[str]) -> int:
    """Records in the shards `paths` (a corrupt shard raises `ShardError` naming it)."""
    return len(open_shards(paths))
