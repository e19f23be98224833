"""The HF <-> NNX table run both ways: names, prefixes and layouts (slices included) invert each other."""
import numpy as np
import pytest

from omnirrm_jax.models import hf_map


@pytest.mark.parametrize("ckpt, ours", [("visual.merger.mlp.0", "visual.merger.mlp_0"),
                                        ("audio_tower.layers.1.fc1", "audio_tower.layers.1.fc1"),
                                        ("model.layers.12.mlp.down_proj", "model.layers.12.mlp.down_proj")])
def test_module_names_both_ways(ckpt, ours):
    assert hf_map.hf_to_nnx_module(ckpt) == ours and hf_map.nnx_to_hf_module(ours) == ckpt


def test_stored_names():
    assert hf_map.nnx_path_to_hf(("visual", "merger", "mlp_2", "kernel")) == "visual.merger.mlp.2.weight"
    assert hf_map.checkpoint_name("thinker.model.norm.weight") == "model.norm.weight"
    assert hf_map.checkpoint_name("model.language_model.norm.weight") == "model.norm.weight"
    assert hf_map.checkpoint_name("talker.codec_head.weight") is None
    for ckpt in ("model.layers.0.q_proj", "visual.blocks.0.attn.qkv", "audio_tower.proj", "lm_head"):
        assert hf_map.v5_to_checkpoint(hf_map.checkpoint_to_v5(ckpt)) == ckpt


@pytest.mark.parametrize("torch_shape", [(6, 4), (6, 4, 3), (8, 3, 2, 2, 2), (5,)])
def test_layouts_and_slices_invert(torch_shape):
    leaf = "kernel" if len(torch_shape) > 1 else "bias"
    t = np.arange(np.prod(torch_shape), dtype=np.float32).reshape(torch_shape)
    ours = hf_map.from_torch_layout(leaf, t)
    assert ours.shape == hf_map.nnx_shape(leaf, torch_shape)
    back = hf_map.to_torch_layout(leaf, ours, torch_shape if len(torch_shape) == 5 else None)
    np.testing.assert_array_equal(back, t)
    index = tuple(slice(1, n) for n in ours.shape)
    t_index = hf_map.torch_index(leaf, index, len(torch_shape))
    if len(torch_shape) == 5:
        assert t_index is None  # read whole
    else:
        np.testing.assert_array_equal(hf_map.from_torch_layout(leaf, t[t_index]), ours[index])


def test_checkpoint_name_maps_v5_names_behind_the_thinker_prefix():
    """Adapters saved from a full transformers-v5 Qwen2.5-Omni model name the thinker's modules
    `thinker.model.language_model.*` (after PEFT's `base_model.model.`)."""
    assert hf_map.checkpoint_name("thinker.model.language_model.layers.0.self_attn.q_proj.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert hf_map.checkpoint_name("thinker.model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert hf_map.checkpoint_name("talker.model.layers.0.mlp.up_proj.weight") is None
