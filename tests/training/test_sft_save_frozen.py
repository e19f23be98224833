"""LoRA-only checkpoints by default; `run.save_frozen` also stores the frozen base (a self-contained checkpoint),
and a resumed run takes it back."""
import dataclasses

import jax
import numpy as np
import pytest

from omnirrm_jax import demo
from omnirrm_jax.checkpoint.manager import CheckpointManager, abstract_like
from omnirrm_jax.training import sft


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(workdir=str(root), n_train_per_modality=4, n_eval_per_modality=4, batch_size=8,
                          preset="tiny")
    data = demo.prepare_demo_data(cfg)
    return cfg, data


def _lora_cfg(prepared, workdir, save_frozen, steps=2):
    cfg, data = prepared
    c = demo.sft_config(dataclasses.replace(cfg, steps=steps), data.shards, data.tokenizer_path, str(workdir))
    return dataclasses.replace(c, model=dataclasses.replace(c.model, full_finetune=False),
                               run=dataclasses.replace(c.run, save_frozen=save_frozen))


@pytest.mark.slow  # two short LoRA runs of the tiny model on prepared demo data
def test_save_frozen_stores_and_restores_the_base(prepared, tmp_path):
    lora_only = sft.train(_lora_cfg(prepared, tmp_path / "lora", False), progress=False)
    full = sft.train(_lora_cfg(prepared, tmp_path / "full", True), progress=False, stop_after=1)
    st = full["state"]
    target = {"trainable": abstract_like(st.trainable), "opt_state": abstract_like(st.opt_state),
              "step": abstract_like(st.step), "frozen": abstract_like(st.frozen)}
    # the LoRA-only checkpoint holds no base (file sizes would say little: OCDBT's files vary from run to run)
    mngr = CheckpointManager(str(tmp_path / "lora" / "checkpoints"))
    with pytest.raises(Exception, match="frozen"):
        mngr.restore(None, abstract_state=target)
    mngr.close()
    mngr = CheckpointManager(str(tmp_path / "full" / "checkpoints"))
    restored, _, _ = mngr.restore(None, abstract_state=target)
    mngr.close()
    for a, b in zip(jax.tree.leaves(restored["frozen"]), jax.tree.leaves(st.frozen)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed = sft.train(_lora_cfg(prepared, tmp_path / "full", True), progress=False)  # takes the base back
    assert resumed["micro_steps"] == 2 and lora_only["micro_steps"] == 2
