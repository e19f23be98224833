"""A run's starting state (`training.state.create_run_state`) is built sharded: on an FSDP x tensor mesh of 8 fake
devices no device holds, and no read returns, a whole weight that its sharding splits; the values are bitwise those
of the host-side model (`build_model`: HF weights, PEFT adapter, random preset and LoRA init)."""
import numpy as np
import optax
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models import loading, lora_io
from omnirrm_jax.models import params as P
from omnirrm_jax.training import lora as lora_lib
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.training.config import ModelSpec
from omnirrm_jax.training.state import build_model, create_run_state
from tests.hf_tiny import saved_tiny_thinker


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return saved_tiny_thinker(str(tmp_path_factory.mktemp("hf")), seed=5)


@pytest.fixture(scope="module")
def mesh():
    return S.make_mesh(S.MeshConfig(data=1, fsdp=4, tensor=2))


def _flat(state) -> dict:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


def _assert_state_equals_model(state, model):
    got = {**_flat(state.trainable), **_flat(state.frozen)}
    want = _flat(nnx.state(model))
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and np.array_equal(got[k].view(np.uint8), w.view(np.uint8)), k


def _assert_split_weights_stay_split(state):
    """Every array lives on its sharding; where that splits the array, each device holds only its block."""
    split = 0
    for tree in (state.trainable, state.frozen):
        for path, v in nnx.to_flat_state(tree):
            arr = v[...]
            whole = arr.sharding.shard_shape(arr.shape) == arr.shape
            for shard in arr.addressable_shards:
                assert shard.data.shape == arr.sharding.shard_shape(arr.shape), path
            split += not whole
    assert split > 20  # the test means something: many weights are split on this mesh


def _spy_reads(monkeypatch):
    reads, real = [], loading.read_slice

    def spy(files, stored, index):
        out = real(files, stored, index)
        reads.append((stored.key, stored.shape, out.shape))
        return out

    monkeypatch.setattr(loading, "read_slice", spy)
    return reads


def test_hf_base_with_new_lora_is_read_into_its_shardings(hf_dir, mesh, monkeypatch):
    spec = ModelSpec(hf_path=hf_dir, lora=lora_lib.LoraConfig(rank=4, alpha=8))
    cfg = P.read_config(hf_dir)
    reads = _spy_reads(monkeypatch)
    state, _ = create_run_state(spec, cfg, optax.adamw(1e-3), mesh, seed=3)
    _assert_split_weights_stay_split(state)
    partial = [r for r in reads if r[2] != tuple(r[1])]
    assert partial and all(np.prod(got) < np.prod(whole) for _, whole, got in partial)
    monkeypatch.undo()
    host = build_model(cfg, hf_path=hf_dir, lora_cfg=spec.lora, lora_path=None, seed=3)
    _assert_state_equals_model(state, host)


def test_hf_base_with_adapter_and_random_preset_equal_the_host_model(hf_dir, mesh, tmp_path):
    cfg = P.read_config(hf_dir)
    trained = build_model(cfg, hf_path=hf_dir, lora_cfg=lora_lib.LoraConfig(rank=4, alpha=8), lora_path=None,
                          seed=9)
    for _, v in nnx.to_flat_state(nnx.state(trained, nnx.LoRAParam)):  # B is zero at init: give it values
        v.set_value(v[...] + 0.01)
    lora_io.save_adapter(trained, str(tmp_path / "adapter"))
    spec = ModelSpec(hf_path=hf_dir, lora_path=str(tmp_path / "adapter"))
    state, _ = create_run_state(spec, cfg, optax.adamw(1e-3), mesh, seed=0)
    _assert_split_weights_stay_split(state)
    _assert_state_equals_model(state, build_model(cfg, hf_path=hf_dir, lora_cfg=spec.lora,
                                                  lora_path=spec.lora_path, seed=0))

    for full in (False, True):
        spec = ModelSpec(preset="tiny", full_finetune=full)
        cfg = C.tiny()
        state, _ = create_run_state(spec, cfg, optax.adamw(1e-3), mesh, seed=1)
        _assert_split_weights_stay_split(state)
        host = build_model(cfg, hf_path=None, lora_cfg=None if full else spec.lora, lora_path=None, seed=1)
        _assert_state_equals_model(state, host)  # jitted, sharded init = eager init, bit for bit
