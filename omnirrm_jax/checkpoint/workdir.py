"""A training run's workdir as a judge source: recognised by its `checkpoints/` folder (and no HF config.json), judged
at its newest finished step. Plain file-system reads, no Orbax: the eval and judge commands name the judge (for
their resume checks) before anything is loaded."""

from __future__ import annotations

import os


def is_training_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints")) and not os.path.isfile(os.path.join(path, "config.json"))


def newest_step(workdir: str) -> int | None:
    """The newest finished checkpoint step of `workdir/checkpoints` (Orbax names a finished step by its number alone;
    one being written carries a tmp suffix); None when there is none."""
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    return max(steps, default=None)
