"""Training checkpoints: one Orbax step directory holds the trainable parameters (LoRA-only or full),
the optimizer state, step, RNG key, the data-iterator state and the resolved config.

Orbax writes into a temporary directory and renames it when complete, so an interrupted save is never
picked up; leftovers are cleaned at start-up. Old checkpoints past keep-N are first renamed into `TRASH`
(atomic) and removed from there, so a kill during that removal never leaves a half-deleted step listed.
Restoring takes abstract targets carrying shardings, so a run can resume on a different mesh.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax

from omnirrm_jax.errors import UserError
from omnirrm_jax.parallel.distributed import allgather_json

TRASH = "deleted"  # old checkpoints go here by rename before they are removed


class CheckpointManager:
    def __init__(self, directory: str, *, keep: int = 4, async_save: bool = True):
        import orbax.checkpoint as ocp

        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save, todelete_subdir=TRASH)
        self._ocp = ocp
        self._mngr = ocp.CheckpointManager(self.directory, options=options)
        # Orbax cleans unfinished (temporary) step directories in a background thread and waits for it only at
        # the first save; a resuming run lists and restores first, so wait here (tests/checkpoint kill -9 test).
        self._mngr._maybe_await_cleanup_tmp_directory()
        self._empty_trash()

    def _empty_trash(self) -> None:
        """Removes checkpoints that keep-N retired (the primary process only: one shared directory)."""
        trash = os.path.join(self.directory, TRASH)
        if jax.process_index() != 0 or not os.path.isdir(trash):
            return
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, *, state: Any, data_state: dict | None, meta: dict, force: bool = False) -> bool:
        """Saves `state` (a pytree of arrays: params, opt_state, rng...) with JSON sidecars.

        Every process must call it. `data_state` is this process's iterator state; the states of all processes
        are gathered and stored together (`_per_process`), since one process writes the JSON items."""
        ocp = self._ocp
        self._empty_trash()
        per_process = {"process_count": jax.process_count(), "processes": allgather_json(data_state or {})}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                  data=ocp.args.JsonSave(per_process))
        return self._mngr.save(step, args=args, force=force)

    def restore(self, step: int | None, *, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step` (default: latest). `abstract_state` gives structure,
        dtypes and target shardings (`jax.ShapeDtypeStruct(..., sharding=...)` leaves)."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore(),
                                  data=ocp.args.JsonRestore())
        out = self._mngr.restore(step, args=args)
        return out["state"], self._this_process(dict(out["data"] or {}), step), dict(out["meta"] or {})

    def _this_process(self, data: dict, step: int) -> dict:
        """This process's data state. The data order depends on the process count (each reads its block of
        every global batch), so resuming with another count would silently replay or skip data: an error."""
        if "processes" not in data:  # written before per-process states (single process)
            return data
        if data["process_count"] != jax.process_count():
            raise UserError(f"checkpoint {self.directory} step {step} was written by {data['process_count']} "
                             f"processes; this run has {jax.process_count()}. Resume with the same number of "
                             "processes (the data-iterator positions are per process)")
        return dict(data["processes"][jax.process_index()] or {})

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
        self._empty_trash()


def read_meta(directory: str, step: int | None = None) -> tuple[int, dict] | None:
    """(step, JSON meta) of `step` (default: the newest finished checkpoint) in `directory`, or None when there is
    none. Writes nothing (no clean-up, no folder created), so a run can check whose checkpoints a workdir holds
    before it touches the workdir."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(directory):
        return None
    steps = ocp.utils.checkpoint_steps(os.path.abspath(directory))  # finished steps (no temporary folders)
    step = max(steps, default=None) if step is None else step
    if step is None or step not in steps:
        return None
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(os.path.abspath(directory), str(step),
                                                                              "meta"))
    return step, dict(meta or {})


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring `tree`, as restore targets."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
