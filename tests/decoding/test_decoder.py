"""`sampler.Decoder`: the graph definition bound into the programs, weights passed as States or `FlatState`s,
gives `generate(model)`'s tokens and log-probs exactly, and a second call neither traces nor compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.decoding import sampler as SM
from omnirrm_jax.models import config as C
from omnirrm_jax.models.flat_state import FlatState, unflat
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.training import lora
from tests.compile_count import count_compiles


def _lora_model():
    model = Thinker(C.tiny(dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    moved = 0
    for path, var in nnx.iter_graph(model):  # B off zero: the branches change the samples
        if isinstance(var, nnx.LoRAParam) and path[-1] == "lora_b":
            var[...] = 0.3 * jax.random.normal(jax.random.key(len(path)), var[...].shape)
            moved += 1
    assert moved
    return model


def test_flat_state_round_trips_and_jits_like_the_state():
    model = _lora_model()
    _, trainable, frozen = nnx.split(model, nnx.LoRAParam, ...)
    flat = FlatState.of(frozen)
    assert len(flat.leaves) == len(jax.tree.leaves(frozen))
    back = unflat(flat)
    assert jax.tree.structure(back) == jax.tree.structure(frozen)
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(frozen)))
    assert unflat(frozen) is frozen

    total = jax.jit(lambda s: sum(jnp.sum(x) for x in jax.tree.leaves(unflat(s))))
    np.testing.assert_array_equal(total(flat), total(frozen))
    moved = FlatState.of(jax.tree.map(lambda a: a + 1, frozen))
    with count_compiles() as compiles:  # a new FlatState of the same structure hits the first one's program
        total(moved)
        total(flat)
    assert compiles == [], compiles


def test_decoder_equals_generate_and_compiles_once():
    model = _lora_model()
    cfg = model.config
    ids = np.random.default_rng(0).integers(1, 400, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    inputs = prepare_inputs(cfg, ids, attention_mask=mask)
    sampling = SM.SamplingConfig(max_new_tokens=6, num_samples=3, stop_token_ids=(), pad_token_id=0)
    want = SM.generate(model, inputs, sampling, jax.random.key(3))

    graphdef, trainable, frozen = nnx.split(model, nnx.LoRAParam, ...)
    decoder = SM.Decoder(graphdef)
    got = decoder.generate((trainable, FlatState.of(frozen)), inputs, sampling, jax.random.key(3))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.logprobs, want.logprobs)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    # the caller's weights are untouched by the LoRA fold inside the decode program
    np.testing.assert_array_equal(SM.generate(model, inputs, sampling, jax.random.key(3)).tokens, want.tokens)

    new_frozen = FlatState.of(jax.tree.map(lambda a: a * 1.01, frozen))
    with count_compiles() as compiles:  # new weights of the same structure: the same two programs
        moved = decoder.generate((trainable, new_frozen), inputs, sampling, jax.random.key(4))
        jax.block_until_ready(moved)
    assert compiles == [], compiles
    assert decoder._prefill._cache_size() == 1 and decoder._decode._cache_size() == 1


def test_decoder_names_weights_that_are_not_a_tuple():
    model = Thinker(C.tiny(dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    inputs = prepare_inputs(model.config, np.ones((1, 4), np.int64))
    with pytest.raises(TypeError, match="tuple of States"):
        SM.Decoder(graphdef).prefill(state, inputs)
