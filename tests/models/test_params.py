"""Checkpoint I/O: strict HF loading, bit-exact round trip, PEFT adapters, Orbax conversion, bad input."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from omnirrm_jax.models import config as C
from omnirrm_jax.models import convert, lora_io
from omnirrm_jax.models import params as P
from tests.hf_tiny import saved_tiny_thinker, tiny_hf_thinker, to_np


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return saved_tiny_thinker(str(tmp_path_factory.mktemp("hf")), seed=2)


def _text_logits(model, ids):
    return np.asarray(model(ids))


def _hf_logits(hf, ids):
    with torch.no_grad():
        return to_np(hf(input_ids=torch.tensor(ids)).logits)


IDS = np.array([[1, 5, 9, 42, 7, 300, 11, 2]], np.int32)


def test_round_trip_is_bit_exact(hf_dir, tmp_path):
    model, cfg = P.load_hf(hf_dir)
    assert cfg.text.hidden_size == 64 and cfg.vision.fullatt_block_indexes == (1,)
    P.save_hf(model, str(tmp_path / "out"))
    a, b = load_file(os.path.join(hf_dir, "model.safetensors")), load_file(str(tmp_path / "out/model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    # transformers loads our export and agrees with the original
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration
    hf2 = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    hf1 = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(hf_dir).eval()
    np.testing.assert_array_equal(_hf_logits(hf1, IDS), _hf_logits(hf2, IDS))


def test_sharded_thinker_prefixed_with_talker_and_v4_rope(hf_dir, tmp_path):
    """A full-model style checkpoint: `thinker.` prefix, talker/token2wav tensors, two shards, v4 rope_scaling."""
    src = load_file(os.path.join(hf_dir, "model.safetensors"))
    names = sorted(src)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": {f"thinker.{k}": src[k] for k in names[:half]},
              "model-00002-of-00002.safetensors": {f"thinker.{k}": src[k] for k in names[half:]}}
    shards["model-00002-of-00002.safetensors"]["talker.codec_head.weight"] = np.zeros((3, 4), np.float32)
    shards["model-00002-of-00002.safetensors"]["token2wav.x.weight"] = np.zeros((2,), np.float32)
    weight_map = {}
    for fname, tensors in shards.items():
        save_file(tensors, str(tmp_path / fname))
        weight_map.update({k: fname for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    thinker_cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    text = thinker_cfg["text_config"]
    rp = text.pop("rope_parameters")
    text["rope_scaling"] = {"type": "default", "mrope_section": rp["mrope_section"]}
    text["rope_theta"] = rp["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni",
                                                      "thinker_config": thinker_cfg}))
    model, cfg = P.load_hf(str(tmp_path))
    ref, _ = P.load_hf(hf_dir)
    assert cfg.text.mrope_section == (2, 3, 3) and cfg.text.rope_theta == 1e6
    np.testing.assert_array_equal(_text_logits(model, IDS), _text_logits(ref, IDS))


def _corrupt(hf_dir, tmp_path, edit):
    d = tmp_path / "bad"
    shutil.copytree(hf_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))
    return str(d)


def test_missing_extra_misshaped_tensors_are_named(hf_dir, tmp_path):
    def edit(t):
        del t["model.layers.0.mlp.up_proj.weight"]
        t["model.layers.0.extra.weight"] = np.zeros((2, 2), np.float32)
        t["visual.blocks.1.attn.q.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(P.CheckpointMismatchError) as e:
        P.load_hf(_corrupt(hf_dir, tmp_path, edit))
    msg = str(e.value)
    assert "missing tensor model.layers.0.mlp.up_proj.weight (model expects shape (128, 64))" in msg
    assert "unexpected tensor model.layers.0.extra.weight (shape (2, 2))" in msg
    assert "visual.blocks.1.attn.q.weight has shape (32, 31), model expects (32, 32)" in msg


def test_config_that_does_not_match_the_weights(hf_dir, tmp_path):
    d = tmp_path / "cfg"
    shutil.copytree(hf_dir, d)
    raw = json.load(open(d / "config.json"))
    raw["text_config"]["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(P.CheckpointMismatchError, match=r"model.layers.0.mlp.gate_proj.weight has shape \(128, 64\), "
                                                        r"model expects \(96, 64\)"):
        P.load_hf(str(d))
    raw.pop("text_config")
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="config.json.*missing \\['text_config'\\]"):
        P.load_hf(str(d))


def _peft_adapter(hf_dir, tmp_path, targets, **lora):
    from peft import LoraConfig, get_peft_model

    hf = tiny_hf_thinker(seed=2)
    peft_cfg = LoraConfig(r=4, lora_alpha=16, target_modules=targets, lora_dropout=0.0, init_lora_weights=False,
                          **lora)
    pm = get_peft_model(hf, peft_cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    out = str(tmp_path / "adapter")
    pm.save_pretrained(out)
    merged = pm.merge_and_unload().eval()
    return out, merged


TARGETS = r".*(language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|merger\.mlp\.(0|2)|audio_tower\.proj)"


def test_peft_adapter_merged_matches_peft(hf_dir, tmp_path):
    adapter, merged = _peft_adapter(hf_dir, tmp_path, TARGETS)
    model, _ = P.load_hf(hf_dir, lora_path=adapter)
    ours, ref = _text_logits(model, IDS), _hf_logits(merged, IDS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
    # kept as LoRA branches: same logits, and merging them gives the same kernels
    kept, _ = P.load_hf(hf_dir, lora_path=adapter, merge_lora=False)
    assert kept.model.layers[0].self_attn.q_proj.lora_a is not None
    np.testing.assert_allclose(_text_logits(kept, IDS), ours, atol=1e-5 * np.abs(ref).max())
    lora_io.merge_lora(kept)
    np.testing.assert_allclose(np.asarray(kept.visual.merger.mlp_0.kernel[...]),
                               np.asarray(model.visual.merger.mlp_0.kernel[...]), atol=1e-6)


@pytest.mark.parametrize("pattern", [{"q_proj": 64}, {"layers.0.self_attn.q_proj": 64}, {r"layers\.\d\.mlp\.up_proj": 2}])
def test_alpha_pattern_keys_match_as_peft_matches_them(hf_dir, tmp_path, pattern):
    """PEFT matches an alpha_pattern key as a regex against the end of the module's name, not only its last part."""
    adapter, merged = _peft_adapter(hf_dir, tmp_path, ["q_proj", "v_proj", "up_proj"], alpha_pattern=pattern)
    model, _ = P.load_hf(hf_dir, lora_path=adapter)
    ours, ref = _text_logits(model, IDS), _hf_logits(merged, IDS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_bad_adapter_is_named(hf_dir, tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 64), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((63, 2), np.float32)},
              str(d / "adapter_model.safetensors"))
    with pytest.raises(lora_io.AdapterError, match=r"model.layers.0.self_attn.q_proj lora_A \(2, 64\) / lora_B "
                                                   r"\(63, 2\) do not fit"):
        P.load_hf(hf_dir, lora_path=str(d))


def test_convert_cli_round_trip(hf_dir, tmp_path):
    from omnirrm_jax import cli

    assert cli.main(["convert", hf_dir, str(tmp_path / "orbax"), "--to", "orbax"]) == 0
    assert cli.main(["convert", str(tmp_path / "orbax"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    a, b = load_file(os.path.join(hf_dir, "model.safetensors")), load_file(str(tmp_path / "hf/model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    model, cfg = convert.load_orbax(str(tmp_path / "orbax"), "bfloat16")
    assert model.model.embed_tokens.embedding[...].dtype == jnp.bfloat16 and cfg.param_dtype == "bfloat16"


def test_convert_keeps_the_stored_dtype_unless_told(tmp_path):
    """A bf16 checkpoint comes back bf16 through Orbax (not silently doubled to fp32); --dtype still casts."""
    from safetensors import safe_open

    from omnirrm_jax import cli

    tiny_hf_thinker(seed=3).to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    assert cli.main(["convert", str(tmp_path / "bf16"), str(tmp_path / "orbax"), "--to", "orbax"]) == 0
    assert json.loads((tmp_path / "orbax/config.json").read_text())["dtype"] == "bfloat16"
    assert cli.main(["convert", str(tmp_path / "orbax"), str(tmp_path / "back"), "--to", "hf"]) == 0
    assert cli.main(["convert", str(tmp_path / "orbax"), str(tmp_path / "f32"), "--to", "hf", "--dtype", "float32"]) == 0
    for name, dtype in (("back", "BF16"), ("f32", "F32")):
        with safe_open(str(tmp_path / name / "model.safetensors"), "np") as f:
            assert f.get_slice("lm_head.weight").get_dtype() == dtype, name


def test_tied_checkpoint_that_also_stores_the_head_loads_as_transformers_loads_it(tmp_path):
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    d = saved_tiny_thinker(str(tmp_path), seed=1, tie=True)
    tensors = load_torch(os.path.join(d, "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # as .bin -> safetensors writes it
    save_torch(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(d).eval()
    model, cfg = P.load_hf(d)
    assert cfg.text.tie_word_embeddings and model.lm_head is None
    ours, ref = _text_logits(model, IDS), _hf_logits(hf, IDS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_scaled_rope_is_refused_and_a_missing_mrope_section_defaults_as_transformers():
    text = dict(C.to_hf_dict(C.tiny())["text_config"])
    for params in ({"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                   {"rope_type": "yarn", "rope_theta": 1e6}):
        bad = dict(text, rope_parameters=params, rope_scaling=None)
        with pytest.raises(ValueError, match=f"rope_parameters asks for rope_type '{params['rope_type']}'"):
            C._rope(bad)
    with pytest.raises(ValueError, match="rope_scaling asks for rope_type 'dynamic'"):
        C._rope(dict(text, rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}))
    plain = dict(text, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rope_scaling=None)
    assert C._rope(plain) == (1e6, (16, 24, 24))
    v4 = dict(text, rope_parameters=None, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=5.0)
    assert C._rope(v4) == (5.0, (2, 3, 3))


def test_ms_swift_style_adapter_names(hf_dir, tmp_path):
    """ms-swift trains the full Qwen2.5-Omni model under transformers 4.5x: adapter keys read
    `base_model.model.thinker.model.layers...lora_A.weight` and `...thinker.visual...`."""
    adapter, merged = _peft_adapter(hf_dir, tmp_path, TARGETS)
    tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    assert any(".language_model." in k for k in tensors)  # PEFT on transformers v5 uses in-memory names
    swift = tmp_path / "swift"
    swift.mkdir()
    renamed = {}
    for k, v in tensors.items():
        k = k.replace("base_model.model.model.language_model.", "base_model.model.thinker.model.")
        k = k.replace("base_model.model.model.visual.", "base_model.model.thinker.visual.")
        k = k.replace("base_model.model.model.audio_tower.", "base_model.model.thinker.audio_tower.")
        renamed[k] = v
    assert all(".thinker." in k for k in renamed)
    save_file(renamed, str(swift / "adapter_model.safetensors"))
    shutil.copy(os.path.join(adapter, "adapter_config.json"), swift / "adapter_config.json")
    model, _ = P.load_hf(hf_dir, lora_path=str(swift))
    ours, ref = _text_logits(model, IDS), _hf_logits(merged, IDS)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_export_over_an_older_export_leaves_nothing_of_it(hf_dir, tmp_path):
    """Issue 21 #3: a single-file export over a sharded one used to keep the old model.safetensors.index.json,
    and loading the folder then read the old shards. Now the folder is replaced whole; a failed write leaves the
    old export as it was; a folder that is not a model export is never replaced."""
    from omnirrm_jax.models import fresh_dir

    out = str(tmp_path / "export")
    old, _ = P.load_hf(hf_dir)
    P.save_hf(old, out, max_shard_bytes=20_000)  # several shards + index
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    new, _ = P.load_hf(hf_dir)
    new.lm_head.kernel.set_value(new.lm_head.kernel[...] + 1.0)
    P.save_hf(new, out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    back, _ = P.load_hf(out)
    np.testing.assert_array_equal(np.asarray(back.lm_head.kernel[...]), np.asarray(new.lm_head.kernel[...]))
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".export.")]  # no temporary folders left

    with pytest.raises(RuntimeError, match="disk full"):
        with fresh_dir.replacing(out) as tmp:
            open(os.path.join(tmp, "config.json"), "w").close()
            raise RuntimeError("disk full")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".export.")]

    data = tmp_path / "mydata"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(fresh_dir.NotAModelDir, match="not a model folder"):
        P.save_hf(new, str(data))
    assert (data / "notes.txt").read_text() == "keep me"


def test_adapter_and_orbax_exports_replace_older_ones(hf_dir, tmp_path):
    from omnirrm_jax.training.lora import LoraConfig, apply_lora

    model, _ = P.load_hf(hf_dir)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.bin").write_bytes(b"an older pickle adapter")  # PEFT would prefer none of ours
    (out / "adapter_config.json").write_text("{}")
    from flax import nnx

    apply_lora(model, LoraConfig(rank=2, alpha=4.0), nnx.Rngs(0))
    lora_io.save_adapter(model, str(out))
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    orbax_dir = tmp_path / "orbax"
    convert.save_orbax(model, str(orbax_dir))
    (orbax_dir / "stale.txt").write_text("x")
    convert.save_orbax(model, str(orbax_dir))
    assert "stale.txt" not in os.listdir(orbax_dir)
