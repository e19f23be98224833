"""Sharded weight loading: HF safetensors (and LoRA adapters, Orbax weights) read straight into the shardings of an
FSDP x tensor mesh give exactly the values of the whole-tensor reader, and no device ever holds, nor any read
returns, a whole weight that its sharding splits. Two processes each read only their own slices."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models import convert, hf_map, loading, lora_io
from omnirrm_jax.models import params as P
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora as lora_lib
from omnirrm_jax.parallel import sharding as S
from tests.hf_tiny import saved_tiny_thinker
from tests.multiprocess import ROOT, start_workers, wait_workers

PATCH_EMBED = "visual.patch_embed.proj.weight"  # Conv3d: read whole by design (small)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return saved_tiny_thinker(str(tmp_path_factory.mktemp("hf")), seed=3)


@pytest.fixture(scope="module")
def mesh():
    return S.make_mesh(S.MeshConfig(data=1, fsdp=4, tensor=2))


def _base_shardings(abstract, mesh):
    return S.state_shardings(nnx.state(abstract, P.base_params_filter()), mesh)


def _flat(model, filt=None):
    return dict(nnx.to_flat_state(nnx.state(model, filt or P.base_params_filter())))


def _whole_tensor_reference(path, dtype="float32"):
    """Today's reader: every tensor read whole (through JAX), then assigned."""
    model = P.abstract_thinker(P.read_config(path, param_dtype=dtype, dtype=dtype))
    P.assign_hf_tensors(model, P.read_safetensors_dir(path), source=path)
    return model


def _assert_bitwise_equal(got, want):
    g, w = _flat(got), _flat(want)
    assert sorted(g) == sorted(w)
    for k in w:
        a, b = np.asarray(g[k][...]), np.asarray(w[k][...])
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{k} differs"


def _spy_reads(monkeypatch):
    reads = []
    real = loading.read_slice

    def spy(files, stored, index):
        out = real(files, stored, index)
        reads.append((stored.key, index, out.size))
        return out

    monkeypatch.setattr(loading, "read_slice", spy)
    return reads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sharded_load_equals_whole_tensor_load_and_never_holds_a_whole_split_weight(hf_dir, mesh, dtype,
                                                                                    monkeypatch):
    reads = _spy_reads(monkeypatch)
    cfg = P.read_config(hf_dir, param_dtype=dtype, dtype=dtype)
    abstract = P.abstract_thinker(cfg)
    shardings = _base_shardings(abstract, mesh)
    model = loading.load_hf_sharded(hf_dir, abstract, shardings)
    reads = list(reads)  # those of the sharded load only
    _assert_bitwise_equal(model, _whole_tensor_reference(hf_dir, dtype))
    unsharded, _ = P.load_hf(hf_dir, dtype=dtype)  # the convenience loader: the same values
    _assert_bitwise_equal(unsharded, model)

    index = loading.index_safetensors_dir(hf_dir)
    name_of = {path: name for path, name in hf_map.match_hf_tensors(abstract, {n: t.shape for n, t in index.items()}).items()}
    sh = dict(nnx.to_flat_state(shardings))
    split = 0
    for path, var in _flat(model).items():
        arr, want = var[...], sh[path].get_value()
        assert arr.sharding == want, path
        shard_shape = want.shard_shape(arr.shape)
        assert all(s.data.shape == shard_shape for s in arr.addressable_shards), path
        if shard_shape == arr.shape:
            continue
        split += 1
        key = index[name_of[path]].key
        sizes = [n for k, _, n in reads if k == key]
        assert sizes, f"{key} was never read"
        if key == PATCH_EMBED:
            assert sizes == [arr.size] * len(sizes)  # read whole, sliced on the host
            continue
        # every read returns one device's slice: a whole-tensor read (what device_put of a loaded model does) fails
        assert max(sizes) == int(np.prod(shard_shape)) < arr.size, (key, sizes, shard_shape)
    assert split > 40, f"only {split} tensors are split on the mesh: the test proves little"


def test_checkpoint_mismatch_is_reported_before_any_data_is_read(hf_dir, tmp_path, mesh, monkeypatch):
    from safetensors.numpy import load_file, save_file
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(hf_dir, d)
    t = load_file(str(d / "model.safetensors"))
    del t["model.layers.1.self_attn.o_proj.weight"]
    t["visual.blocks.0.mlp.up_proj.weight"] = np.zeros((48, 31), np.float32)
    save_file(t, str(d / "model.safetensors"))
    reads = _spy_reads(monkeypatch)
    abstract = P.abstract_thinker(P.read_config(str(d)))
    with pytest.raises(P.CheckpointMismatchError) as e:
        loading.load_hf_sharded(str(d), abstract, _base_shardings(abstract, mesh))
    assert "missing tensor model.layers.1.self_attn.o_proj.weight" in str(e.value)
    assert "visual.blocks.0.mlp.up_proj.weight has shape (48, 31), model expects (48, 32)" in str(e.value)
    assert reads == []


def _adapter(hf_dir, tmp_path):
    """A PEFT adapter (our writer) with random A and B on the default targets."""
    model, _ = P.load_hf(hf_dir)
    lora_lib.apply_lora(model, lora_lib.LoraConfig(rank=4, alpha=8.0), nnx.Rngs(1))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        var.set_value(rng.normal(size=var.shape).astype(np.float32) * 0.1)
    lora_io.save_adapter(model, str(tmp_path / "adapter"))
    return str(tmp_path / "adapter")


def test_lora_adapter_onto_sharded_base(hf_dir, tmp_path, mesh):
    adapter = _adapter(hf_dir, tmp_path)
    cfg = P.read_config(hf_dir)
    shardings = _base_shardings(P.abstract_thinker(cfg), mesh)
    merged, _ = P.load_hf(hf_dir, lora_path=adapter, shardings=shardings)
    ref, _ = P.load_hf(hf_dir, lora_path=adapter)
    _assert_bitwise_equal(merged, ref)
    assert all(v[...].sharding == s.get_value() for (_, v), (_, s) in
               zip(sorted(_flat(merged).items()), sorted(nnx.to_flat_state(shardings))))
    # kept as branches: the factors sit where the logical-axis table puts them, values as read
    kept, _ = P.load_hf(hf_dir, lora_path=adapter, merge_lora=False, shardings=shardings)
    kept_ref, _ = P.load_hf(hf_dir, lora_path=adapter, merge_lora=False)
    lora = nnx.state(kept, nnx.LoRAParam)
    want = dict(nnx.to_flat_state(S.state_shardings(lora, mesh)))
    ref_lora = dict(nnx.to_flat_state(nnx.state(kept_ref, nnx.LoRAParam)))
    assert len(want) == len(ref_lora) > 10
    for path, var in nnx.to_flat_state(lora):
        assert var[...].sharding == want[path].get_value(), path
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(ref_lora[path][...]))
    # merging the sharded branches gives the merged kernels, still sharded
    lora_io.merge_lora(kept)
    lora_io.merge_lora(kept_ref)
    _assert_bitwise_equal(kept, kept_ref)
    assert kept.model.layers[0].mlp.up_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_orbax_weights_restore_into_target_shardings(hf_dir, tmp_path, mesh):
    model, cfg = P.load_hf(hf_dir)
    convert.save_orbax(model, str(tmp_path / "orbax"))
    shardings = _base_shardings(P.abstract_thinker(cfg), mesh)
    restored, _ = convert.load_orbax(str(tmp_path / "orbax"), shardings=shardings)
    _assert_bitwise_equal(restored, model)
    for (path, var), (_, s) in zip(sorted(_flat(restored).items()), sorted(nnx.to_flat_state(shardings))):
        assert var[...].sharding == s.get_value(), path


# ------------------------------------------------------------------------------------------ two processes (slow)

WORKER = os.path.join(os.path.dirname(__file__), "sharded_load_worker.py")


def _mask(shape, index):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in index)] = True
    return m


@pytest.mark.slow
def test_two_processes_each_read_only_their_own_slices(tmp_path):
    model = Thinker(C.tiny(), rngs=nnx.Rngs(4))
    ckpt = str(tmp_path / "ckpt")
    P.save_hf(model, ckpt, max_shard_bytes=200_000)  # several files, with an index
    assert os.path.exists(os.path.join(ckpt, "model.safetensors.index.json"))
    out = str(tmp_path / "out")
    wait_workers(start_workers(WORKER, [ckpt, out], n=2, devices_per_process=4, out=out, name="load"),
                 out=out, name="load", timeout=300)
    reports = [json.load(open(os.path.join(out, f"reads.{i}.json"))) for i in range(2)]
    index = loading.index_safetensors_dir(ckpt)
    disjoint = 0
    for key, stored in index.items():
        read = [np.zeros(stored.shape, bool) for _ in range(2)]
        held = [np.zeros(stored.shape, bool) for _ in range(2)]
        for p, rep in enumerate(reports):
            for idx in rep["reads"].get(stored.key, []):
                read[p] |= _mask(stored.shape, idx)
            for idx in rep["held"][stored.key]:
                held[p] |= _mask(stored.shape, idx)
            if stored.key == PATCH_EMBED:
                assert read[p].all()
            else:  # each process read exactly what its own devices hold
                np.testing.assert_array_equal(read[p], held[p], err_msg=f"process {p} {key}")
        assert (held[0] | held[1]).all(), key
        disjoint += not (held[0] & held[1]).any()
    assert disjoint > 40, f"only {disjoint} tensors are split between the processes"
    # the values the two processes hold, gathered, are the checkpoint's
    gathered = np.load(os.path.join(out, "values.npz"))
    for path, var in _flat(P.load_hf(ckpt)[0]).items():
        np.testing.assert_array_equal(gathered[".".join(map(str, path))], np.asarray(var[...]), err_msg=str(path))
    assert all(r["package"] == os.path.join(ROOT, "omnirrm_jax") for r in reports)
