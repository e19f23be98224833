"""`omnirrm export` from a tiny LoRA SFT run: the HF dir loads in transformers with our logits (image + audio +
text, so the merger and audio-projector LoRA count too), the Orbax export reloads equal, the PEFT adapter reloads
in `peft` and in our loader with the trained factors."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from omnirrm_jax import cli, demo
from omnirrm_jax.training import export
from omnirrm_jax.models import convert, lora_io
from omnirrm_jax.models import params as P
from omnirrm_jax.models.audio import audio_token_count
from omnirrm_jax.training import sft
from omnirrm_jax.training.lora import LoraConfig
from tests.hf_tiny import to_np


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = demo.DemoConfig(workdir=str(root), n_train_per_modality=4, n_eval_per_modality=2, batch_size=8)
    data = demo.prepare_demo_data(cfg)
    c = demo.sft_config(dataclasses.replace(cfg, steps=2), data.shards, data.tokenizer_path, str(root / "run"))
    c = dataclasses.replace(c, model=dataclasses.replace(c.model, full_finetune=False,
                                                          lora=LoraConfig(rank=4, alpha=16.0)),
                            optim=dataclasses.replace(c.optim, learning_rate=2e-2, warmup_ratio=0.0))
    out = sft.train(c, progress=False)
    return str(root / "run"), out["state"].model()


def _batch(cfg, seed=0):
    """One row: text, a 4x6-patch image, 40 mel frames of audio, text (the model's own special ids)."""
    rng = np.random.default_rng(seed)
    grid, frames = np.array([[1, 4, 6]]), 40
    text = lambda n: list(rng.integers(1, 400, size=n))  # noqa: E731
    row = text(5) + [cfg.vision_start_token_id] + [cfg.image_token_id] * (int(grid.prod()) // 4) \
        + [cfg.vision_end_token_id, cfg.audio_start_token_id] + [cfg.audio_token_id] * int(audio_token_count(frames)) \
        + [cfg.audio_end_token_id] + text(6)
    feats = np.zeros((1, cfg.audio.num_mel_bins, 64), np.float32)
    feats[0, :, :frames] = rng.normal(size=(cfg.audio.num_mel_bins, frames))
    return dict(input_ids=np.array([row]), attention_mask=np.ones((1, len(row)), np.int64),
                pixel_values=rng.normal(size=(int(grid.prod()), cfg.vision.patch_dim)).astype(np.float32),
                image_grid_thw=grid, input_features=feats,
                feature_attention_mask=(np.arange(64) < frames)[None].astype(np.int64))


def _hf_logits(model, batch):
    kw = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        return to_np(model(**kw).logits)


def _hf_model(path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.slow
def test_export_hf_orbax_and_adapter(lora_run, tmp_path):
    workdir, trained = lora_run
    cfg = trained.config
    b = trained.visual.merger.mlp_0.lora_b[...]
    assert float(jnp.abs(b).max()) > 1e-4, "training left LoRA B at zero: the test would not see a bad merge"
    batch = _batch(cfg)
    ours = np.asarray(trained(**batch))  # LoRA as separate branches, as trained

    written = export.export(workdir, str(tmp_path / "out"), formats=("orbax", "hf", "adapter"))
    assert sorted(written) == ["adapter", "hf", "orbax"]
    # (b) transformers loads the merged HF dir and agrees
    ref = _hf_logits(_hf_model(written["hf"]), batch)
    np.testing.assert_allclose(ref, ours, atol=1e-4, rtol=0, err_msg="HF export vs our trained model")
    # (a) the Orbax inference checkpoint reloads to exactly the merged parameters
    reloaded, _ = convert.load_orbax(written["orbax"])
    want = nnx.state(export.merged(export.load_trained(workdir)), P.base_params_filter())
    got = nnx.state(reloaded, P.base_params_filter())
    for (k, x), (k2, y) in zip(nnx.to_flat_state(want), nnx.to_flat_state(got)):
        assert k == k2
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(k))
    np.testing.assert_allclose(np.asarray(reloaded(**batch)), ours, atol=1e-4, rtol=0)
    # (c) the adapter: peft attaches it to the base thinker, our loader restores the trained factors
    base = export.load_trained(workdir).model
    nnx.update(base, jax.tree.map(jnp.zeros_like, nnx.state(base, nnx.LoRAParam)))  # B = A = 0: the base
    lora_io.merge_lora(base)
    P.save_hf(base, str(tmp_path / "base"))
    from peft import PeftModel

    acfg = json.load(open(os.path.join(written["adapter"], "adapter_config.json")))
    assert acfg["r"] == 4 and acfg["lora_alpha"] == 16.0 and "model.visual.merger.mlp.0" in acfg["target_modules"]
    peft_model = PeftModel.from_pretrained(_hf_model(str(tmp_path / "base")), written["adapter"]).eval()
    np.testing.assert_allclose(_hf_logits(peft_model, batch), ours, atol=1e-4, rtol=0, err_msg="peft + adapter")
    kept, _ = P.load_hf(str(tmp_path / "base"), lora_path=written["adapter"], merge_lora=False)
    want_lora = dict(nnx.to_flat_state(nnx.state(trained, nnx.LoRAParam)))
    got_lora = dict(nnx.to_flat_state(nnx.state(kept, nnx.LoRAParam)))
    assert sorted(want_lora) == sorted(got_lora) and len(want_lora) > 0
    for k in want_lora:
        np.testing.assert_array_equal(np.asarray(got_lora[k][...]), np.asarray(want_lora[k][...]), err_msg=str(k))


@pytest.mark.slow
def test_cli_export_bfloat16_orbax(lora_run, tmp_path):
    workdir, _ = lora_run
    assert cli.main(["export", workdir, str(tmp_path / "bf16"), "--formats", "orbax", "--dtype", "bfloat16"]) == 0
    model, cfg = convert.load_orbax(str(tmp_path / "bf16" / "orbax"))
    assert cfg.param_dtype == "bfloat16" and model.model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    f32 = export.merged(export.load_trained(workdir))
    np.testing.assert_array_equal(np.asarray(model.model.layers[0].self_attn.q_proj.kernel[...]),
                                  np.asarray(f32.model.layers[0].self_attn.q_proj.kernel[...].astype(jnp.bfloat16)))
    assert not os.path.exists(tmp_path / "bf16" / "hf")


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export.export(str(tmp_path), str(tmp_path / "o"), formats=("onnx",))
    with pytest.raises(FileNotFoundError, match="has no checkpoints/ directory"):
        export.export(str(tmp_path), str(tmp_path / "o"))


@pytest.mark.slow
def test_judge_takes_a_training_workdir(lora_run, tmp_path, capsys):
    """`omnirrm judge WORKDIR` judges with the run's newest checkpoint (LoRA merged) and its own tokenizer: the same
    judgement as the HF export of that checkpoint."""
    workdir, _ = lora_run
    tok = export.load_trained(workdir).meta["config"]["data"]["tokenizer"]
    export.export(workdir, str(tmp_path / "exp"), formats=("hf",))
    argv = ["--question", "What is 3 + 4?", "--answer-a", "7", "--answer-b", "5", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert cli.main(["judge", workdir, *argv]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert cli.main(["judge", str(tmp_path / "exp" / "hf"), "--tokenizer", tok, *argv]) == 0
    from_export = json.loads(capsys.readouterr().out)
    assert from_run["text"] == from_export["text"] and from_run["probs"] == from_export["probs"]
    assert cli.main(["judge", workdir, "--lora", str(tmp_path), *argv]) == 2
    assert "is a training workdir" in capsys.readouterr().err
