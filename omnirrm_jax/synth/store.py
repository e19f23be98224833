"""Append-only JSONL with fsync: what the candidate and teacher stages have paid for survives a kill at any
point. A torn last line (the process died mid-write) is skipped on reading and overwritten by the next append
(the file is cut back to its last complete line first), so nothing already written is ever lost or duplicated."""

from __future__ import annotations

import json
import os


def read_jsonl(path: str) -> list[dict]:
    """Every complete JSON object line of `path` ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn by a kill: never acknowledged, so never relied on
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


class AppendLog:
    """One writer's append-only JSONL; `append` returns once the row is on disk (fsync)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._trim_torn_tail()
        self._f = open(path, "ab")

    def _trim_torn_tail(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, row: dict) -> None:
        self._f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def write_atomic(path: str, text: str) -> None:
    """Write whole-file outputs (prompts, SFT/GRPO JSONL, the report) via a temp file and rename."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def jsonl_text(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
