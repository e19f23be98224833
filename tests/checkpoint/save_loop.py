"""Subprocess for the kill -9 test: saves checkpoints START..END in a loop through our CheckpointManager.

Every value is a function of the step (`expected`), so a restore can be checked bit for bit.
Run as `python -m tests.checkpoint.save_loop DIR START END`; prints "ready" once set up, then each step.
"""
import sys

import numpy as np

N_ARRAYS, SHAPE = 6, (256, 1024)  # ~6 MB a checkpoint: saves take long enough to be killed midway


def expected(step: int) -> tuple[dict, dict, dict]:
    """(state, data_state, meta) saved at `step`."""
    state = {f"w{i}": np.full(SHAPE, step * 10 + i, np.float32) for i in range(N_ARRAYS)}
    state["step"] = np.asarray(step, np.int32)
    return state, {"state": {"position": step}}, {"micro_step": step}


def main(directory: str, start: int, end: int) -> None:
    import jax

    from omnirrm_jax.checkpoint.manager import CheckpointManager

    mngr = CheckpointManager(directory, keep=4)
    print("ready", flush=True)
    for step in range(start, end + 1):
        state, data, meta = expected(step)
        mngr.save(step, state=jax.tree.map(jax.numpy.asarray, state), data_state=data, meta=meta, force=True)
        print("saved", step, flush=True)
    mngr.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
