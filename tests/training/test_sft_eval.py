"""Periodic held-out evaluation inside `sft.train`: eval loss and pairwise accuracy, logged like train metrics."""
import dataclasses
import json
import os

import numpy as np
import pytest

from omnirrm_jax.data import shards
from omnirrm_jax.data import tokenizer as tokenizer_lib
from omnirrm_jax.training import run as run_lib
from omnirrm_jax import demo
from omnirrm_jax.data import pipeline
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.models.thinker import model_inputs
from omnirrm_jax.training import losses, sft


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(workdir=str(root), n_train_per_modality=8, n_eval_per_modality=4, batch_size=8)
    data = demo.prepare_demo_data(cfg)
    return cfg, data


def _cfg(prepared, workdir, **run):
    cfg, data = prepared
    c = demo.sft_config(dataclasses.replace(cfg, steps=4), data.shards, data.tokenizer_path, str(workdir))
    return dataclasses.replace(c, run=dataclasses.replace(c.run, log_every=2, **run))


@pytest.mark.slow  # data prep, a train step, the eval loss and the greedy decoder all compile: ~45 s on 2 cores
def test_eval_every_logs_loss_and_accuracy(prepared, tmp_path):
    out = sft.train(_cfg(prepared, tmp_path, eval_every=3, eval_max_new_tokens=8), progress=False)
    ev = out["eval"]
    # 4 held-out items per modality, every one judged (none dropped: the eval pipeline keeps remainders)
    assert ev["eval/examples"] == 16
    assert {f"eval/accuracy_{m}" for m in ("text", "image", "video", "audio")} <= set(ev)
    assert 0.0 <= ev["eval/accuracy"] <= 1.0 and 0.0 <= ev["eval/valid_json"] <= 1.0
    # the loss is the token mean over all held-out judgements of the final model, whatever the batching
    state, tok = out["state"], out["tokenizer"]
    base = _cfg(prepared, tmp_path)
    pcfg = pipeline.PipelineConfig(**{**base.data.pipeline, "mode": "sft", "batch_size": 16, "num_epochs": 1,
                                      "shuffle_seed": None, "drop_remainder": False, "max_skip_ratio": 1.0})
    paths = shards.expand_paths(base.data.eval)
    (batch,) = list(pipeline.make_dataset(paths, tok, out["thinker_config"], pcfg))
    model = state.model()
    hidden = model.forward(model_inputs(batch), return_hidden=True)
    want, n = losses.masked_cross_entropy(hidden, batch["input_ids"], batch["loss_mask"], logits_fn=model.logits)
    np.testing.assert_allclose(ev["eval/loss"], float(want), rtol=1e-5)
    assert ev["eval/target_tokens"] == float(n) > 0
    # evaluated at step 3 (eval_every) and at the end (step 4), in the same metric stream as training
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "eval/loss" in r] == [3, 4]
    assert any("train/loss" in r for r in rows)


def test_eval_keys_in_run_config():
    c = config_lib.load_config(None, ["run.eval_every=50", "run.eval_batches=4", "data.eval=[a, b]"])
    assert (c.run.eval_every, c.run.eval_batches, c.data.eval) == (50, 4, ("a", "b"))
    with pytest.raises(config_lib.ConfigError, match="did you mean run.eval_every"):
        config_lib.load_config(None, ["run.eval_evry=5"])
    with pytest.raises(config_lib.ConfigError, match="run.eval_every=2 needs data.eval"):
        config_lib.load_config(None, ["run.eval_every=2"])


@pytest.mark.slow  # two short runs of the demo model: ~40 s on 2 cores
def test_max_target_length_reaches_the_step_and_the_logs(prepared, tmp_path, monkeypatch):
    """`data.pipeline.max_target_length` goes to the jitted step as its loss window, the judgements it skips are
    logged by reason, and a step that reports targets before its window stops the run, naming the step."""
    base = _cfg(prepared, tmp_path / "base")
    pcfg = pipeline.PipelineConfig(**{**base.data.pipeline, "mode": "sft", "num_epochs": 1, "shuffle_seed": None,
                                      "drop_remainder": False})
    tok = tokenizer_lib.load_tokenizer(prepared[1].tokenizer_path)
    batches = pipeline.make_dataset(shards.expand_paths(base.data.train), tok, run_lib.resolve_thinker_config(base.model, tok),
                                    pcfg)
    lengths = sorted(int(b["loss_mask"][i].sum()) for b in batches for i in range(len(b["valid"])) if b["valid"][i])
    limit = lengths[len(lengths) // 2]
    assert lengths[0] <= limit < lengths[-1]  # some judgements fit, some do not

    def with_limit(workdir):
        c = _cfg(prepared, workdir)
        return dataclasses.replace(c, data=dataclasses.replace(c.data, pipeline={**c.data.pipeline,
                                                                                 "max_target_length": limit}))
    windows, real = [], sft.jit_sft_step

    def spy(*args, loss_window=None, **kw):
        windows.append(loss_window)
        return real(*args, loss_window=loss_window, **kw)
    monkeypatch.setattr(sft, "jit_sft_step", spy)
    out = sft.train(with_limit(tmp_path / "a"), progress=False)
    assert windows == [limit]
    assert out["metrics"]["data/skipped_target_too_long"] > 0 and out["metrics"]["data/records_seen"] > 0
    monkeypatch.setattr(sft, "jit_sft_step", lambda *args, loss_window=None, **kw: real(*args, loss_window=2, **kw))
    with pytest.raises(ValueError, match=rf"micro-step 1: \d+ target tokens lie before the last {limit} positions"):
        sft.train(with_limit(tmp_path / "b"), progress=False)
