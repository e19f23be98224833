"""Structural guarantees of the thinker: logical axes on every parameter, presets, bad batches."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models import hf_map
from omnirrm_jax.models import layers as L
from omnirrm_jax.models import params as P
from omnirrm_jax.models.thinker import Thinker, prepare_inputs

KNOWN_AXES = {L.EMBED, L.MLP, L.HEADS, L.KV_HEADS, L.VOCAB, L.NORM, L.CONV, L.LORA_RANK, None}


def test_every_parameter_has_logical_axes():
    model = Thinker(C.tiny(), rngs=nnx.Rngs(0))
    for lin in (model.model.layers[0].self_attn.q_proj, model.visual.merger.mlp_0):
        lin.add_lora(4, 8.0, nnx.Rngs(1))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(flat) > 90
    for path, var in flat:
        axes = var.get_metadata().get("out_sharding")
        name = ".".join(map(str, path))
        assert axes is not None, f"{name} has no logical axes"
        assert len(axes) == var.ndim, f"{name}: axes {axes} for shape {var.shape}"
        assert set(axes) <= KNOWN_AXES, f"{name}: unknown axis in {axes}"
        named = [a for a in axes if a is not None]
        assert len(named) == len(set(named)), f"{name}: an axis name repeats in {axes}"


@pytest.mark.parametrize("preset", ["omni_3b", "omni_7b"])
def test_real_presets_have_published_sizes(preset):
    cfg = C.PRESETS[preset]()
    abstract = P.abstract_thinker(cfg)
    n_tensors = len(hf_map.expected_hf_shapes(abstract))
    n_params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    if preset == "omni_7b":
        assert n_tensors == 1346  # visual 518 + audio_tower 489 + model 338 + lm_head 1 (port map §1)
        assert 8.9e9 < n_params < 9.0e9
    else:
        assert 4.7e9 < n_params < 4.9e9
    # a round trip through the HF config dict keeps every field
    assert C.from_hf_dict(C.to_hf_dict(cfg)) == cfg


def test_placeholder_count_mismatch_is_a_clear_error():
    cfg = C.tiny()
    ids = np.array([[1, 2, cfg.image_token_id, cfg.image_token_id, 3]])
    with pytest.raises(ValueError, match=r"image: input_ids hold 2 placeholder tokens \(id 501\) but the image "
                                         r"inputs give 4 features"):
        prepare_inputs(cfg, ids, pixel_values=np.zeros((16, 1176), np.float32), image_grid_thw=np.array([[1, 4, 4]]))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="mrope_section"):
        dataclasses.replace(C.tiny().text, mrope_section=(2, 2, 2))
    with pytest.raises(ValueError, match="vision.out_hidden_size=32 must equal text.hidden_size=64"):
        dataclasses.replace(C.tiny(), vision=dataclasses.replace(C.tiny().vision, out_hidden_size=32))
