"""The trainers' shared loop pieces that need no model: the preemption flag and the stop decision (the agreement
across processes is exercised by tests/training/test_multihost.py, which signals one of two processes)."""
import os
import signal

from omnirrm_jax.parallel import distributed
from omnirrm_jax.training.loop import Preemption


def test_sigterm_sets_the_flag_and_restore_gives_the_handler_back():
    before = signal.getsignal(signal.SIGTERM)
    preempt = Preemption()
    try:
        assert not preempt.should_stop(1) and not preempt.should_stop(1, stop_after=2)
        assert preempt.should_stop(2, stop_after=2)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the flag: the test process lives on
        assert preempt.requested and preempt.should_stop(3)
    finally:
        preempt.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_any_process_alone_is_the_local_flag():
    assert distributed.any_process(True) is True and distributed.any_process(False) is False
