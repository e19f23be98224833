"""kill -9 at random moments during 20 saves: every restore comes from the newest *finished* checkpoint.

A child process saves steps in a loop (async Orbax saves through `CheckpointManager`); the parent kills it
with SIGKILL at a random moment, then reopens the directory as a resuming run would: temporary (unfinished)
step directories must be cleaned, never listed, and every listed step must restore bit for bit (keep-N
retires old steps meanwhile, so kills also land in those deletions). The child
is restarted from the step after the newest finished one until all 20 steps are saved.
"""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from omnirrm_jax.checkpoint.manager import TRASH, CheckpointManager, abstract_like
from tests.checkpoint.save_loop import expected

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL = 20


def _start(directory: str, start: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, "-m", "tests.checkpoint.save_loop", directory, str(start), str(TOTAL)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _unfinished(directory: str) -> list[str]:
    """Anything but finished step directories (temporary saves, retired checkpoints not yet removed)."""
    trash = os.path.join(directory, TRASH)
    return [n for n in os.listdir(directory) if not n.isdigit() and n != TRASH] + \
        [f"{TRASH}/{n}" for n in (os.listdir(trash) if os.path.isdir(trash) else [])]


def _check_all_restore(directory: str) -> int | None:
    """Opens the directory as a resuming run does; checks cleanliness and every listed step; returns the newest."""
    mngr = CheckpointManager(directory, keep=4)
    try:
        assert _unfinished(directory) == [], f"temporary checkpoint dirs left after start-up: {_unfinished(directory)}"
        steps = mngr.all_steps()
        for step in steps:
            state, data, meta = expected(step)
            target = abstract_like(jax.tree.map(jax.numpy.asarray, state))
            got, got_data, got_meta = mngr.restore(step, abstract_state=target)
            for k, v in state.items():
                np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=f"step {step} {k}")
            assert (got_data, got_meta) == (data, meta), step
        latest = mngr.latest_step()
        assert latest == (max(steps) if steps else None)
        return latest
    finally:
        mngr.close()


@pytest.mark.slow  # ~10 child processes, each importing JAX and Orbax
def test_kill_9_during_saves_always_restores_newest_finished(tmp_path):
    rng = random.Random(0)
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    latest, kills, killed_with_tmp = None, 0, 0
    while True:
        start = 1 if latest is None else latest + 1
        child = _start(directory, start)
        assert child.stdout.readline().strip() == "ready"
        if kills < 10 and TOTAL - start >= 2:
            # after a random number of started saves plus a random fraction of one, not after a random time: an idle
            # machine once finished all 20 saves inside the old 1.2 s window, and the run had no kill at all
            for _ in range(rng.randint(0, min(3, TOTAL - start - 1))):
                child.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.05))
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.returncode == -signal.SIGKILL:
                kills += 1
                killed_with_tmp += bool(_unfinished(directory))
        else:  # enough kills: let it finish the remaining saves
            assert child.wait(timeout=120) == 0
        newest = _check_all_restore(directory)
        assert latest is None or (newest is not None and newest >= latest), (latest, newest)
        latest = newest
        if child.returncode == 0:
            break
    assert latest == TOTAL and kills >= 1, kills
    print(f"{kills} kills, {killed_with_tmp} left a temporary checkpoint behind")
