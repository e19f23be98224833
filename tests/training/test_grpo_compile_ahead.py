"""The first GRPO cycle compiles its log-prob and update programs on a thread while the rollout runs
(`RolloutUpdate._start_compiling`): it builds exactly the programs the cycle would build anyway (none twice, none
extra), gives the same records, and a failure there only logs and leaves the compile to the call."""
import collections
import logging

import jax
import numpy as np

from omnirrm_jax.compile_cache import CompileListener
from omnirrm_jax.models.thinker import prepare_inputs
from omnirrm_jax.training import grpo, optim
from omnirrm_jax.training.grpo_config import GRPOSpec
from tests.training.test_golden import ToyTokenizer, _media_prompts, _run_state


def _two_cycles(compile_ahead: bool, break_update: bool = False):
    spec = GRPOSpec(num_generations=2, max_completion_length=6, beta=0.04, num_iterations=2, epsilon=0.2,
                    compile_ahead=compile_ahead)
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0), 10)
    cfg, mesh, state, shardings = _run_state(tx, seed=3)
    batch = dict(prepare_inputs(cfg, **_media_prompts(cfg)))
    batch.update(gold_better=np.array([0, 1]), gold_score_A=np.array([9, 2]), gold_score_B=np.array([2, 8]),
                 valid=np.array([True, True]))
    cycle = grpo.RolloutUpdate.build(state, tx, spec, shardings, tok=ToyTokenizer(), mesh=mesh)
    if break_update:
        real = cycle.step_fn

        class Unlowerable:  # the update program cannot be lowered ahead; calling it works
            def __call__(self, *a):
                return real(*a)

            def lower(self, *a):
                raise RuntimeError("no lowering today")
        cycle.step_fn = Unlowerable()
    jax.clear_caches()  # each run builds its programs from nothing
    built = collections.Counter()
    listener = CompileListener(lambda name, _: built.update([name]))
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    records = []
    try:
        for i in range(2):
            trainable, opt_state, step, record, _ = cycle(trainable, opt_state, step, batch,
                                                          jax.random.fold_in(jax.random.key(0), i))
            records.append({k: v for k, v in record.items() if not k.startswith("time/")})
    finally:
        listener.close()
    return records, built


def test_compiling_ahead_builds_the_same_programs_once_and_changes_nothing():
    records, built = _two_cycles(True)
    records0, built0 = _two_cycles(False)
    assert built == built0, (built, built0)  # the update and the two log-prob programs ("wrapped"), once each
    assert built["jit(wrapped)"] == 3, built
    for r, r0 in zip(records, records0):
        assert r.keys() == r0.keys()
        for k in r:
            np.testing.assert_allclose(r[k], r0[k], rtol=1e-6, err_msg=k)


def test_a_failed_compile_ahead_logs_and_the_cycle_runs(caplog):
    with caplog.at_level(logging.WARNING, logger="omnirrm_jax.training.grpo"):
        records, _ = _two_cycles(True, break_update=True)
    assert len(records) == 2
    warned = [r for r in caplog.records if "compiling the GRPO programs ahead failed" in r.getMessage()]
    assert len(warned) == 1 and "no lowering today" in warned[0].getMessage()
