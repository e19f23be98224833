"""Exact resume: train N steps == train k, stop (checkpoint + data-iterator state), resume, train N-k."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from omnirrm_jax import demo
from omnirrm_jax.training import sft


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(workdir=str(root), n_train_per_modality=12, n_eval_per_modality=4, batch_size=8)
    data = demo.prepare_demo_data(cfg)
    return cfg, data


def _cfg(prepared, workdir, steps=6):
    cfg, data = prepared
    sft_cfg = demo.sft_config(dataclasses.replace(cfg, steps=steps), data.shards, data.tokenizer_path, str(workdir))
    return dataclasses.replace(sft_cfg, run=dataclasses.replace(sft_cfg.run, log_every=2))


@pytest.mark.slow
def test_resume_is_bitwise_exact(prepared, tmp_path):
    full = sft.train(_cfg(prepared, tmp_path / "full"), progress=False)
    first = sft.train(_cfg(prepared, tmp_path / "split"), progress=False, stop_after=3)
    assert first["preempted"] and first["micro_steps"] == 3
    second = sft.train(_cfg(prepared, tmp_path / "split"), progress=False)
    assert second["micro_steps"] == 6 and not second["preempted"]
    a = jax.tree.leaves(full["state"].trainable)
    b = jax.tree.leaves(second["state"].trainable)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert os.path.exists(tmp_path / "split" / "metrics.jsonl")
    # one sequence bucket: everything compiles in the first step (and the first log line), nothing after
    import json

    with open(tmp_path / "full" / "metrics.jsonl") as f:
        counts = [r["compiles"] for r in map(json.loads, f) if "compiles" in r]
    assert len(counts) == 3 and counts[0] == counts[-1] > 0, counts


@pytest.mark.slow
def test_resumed_run_reads_its_programs_from_the_compile_cache(prepared, tmp_path, restore_compile_cache):
    """run.compile_cache: the first run writes its programs, the resumed one (in-memory caches dropped, as in a new
    process) reads them back instead of compiling; the counts are logged."""
    import json

    cfg = _cfg(prepared, tmp_path / "run")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, compile_cache=str(tmp_path / "xla")))
    jax.clear_caches()  # programs earlier tests left in memory would not be compiled, so not written
    sft.train(cfg, progress=False, stop_after=2)
    assert os.listdir(tmp_path / "xla")
    jax.clear_caches()
    sft.train(cfg, progress=False)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [r for r in map(json.loads, f) if "compiles" in r]
    first, resumed = rows[0], rows[-1]
    assert first["step"] == 2 and first["compile/cache_hits"] == 0 and first["compiles"] > 0
    assert resumed["step"] == 6 and resumed["compile/cache_hits"] > 0 and resumed["compile/seconds"] > 0
    # every program the resumed run built came from the cache, in a fraction of the first run's compile time
    assert resumed["compile/cache_hits"] == resumed["compiles"]
    assert resumed["compile/seconds"] < first["compile/seconds"] / 3
