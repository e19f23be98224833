"""Mesh construction, the logical->mesh table, and a sharded thinker forward on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as PS

from omnirrm_jax.models import config as C
from omnirrm_jax.models import layers as L
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.parallel import sharding as S


def test_mesh_fill_and_errors():
    assert S.MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
    assert S.MeshConfig().shape(8) == (8, 1, 1)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        S.MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ValueError, match="needs 6 devices, 8 available"):
        S.MeshConfig(data=3, fsdp=2).shape(8)


def test_logical_rules():
    mesh = S.make_mesh(S.MeshConfig(data=2, fsdp=2, tensor=2))
    assert S.logical_to_spec(("embed", "mlp"), (64, 128), mesh=mesh) == PS("fsdp", "tensor")
    assert S.logical_to_spec(("embed", "mlp"), (63, 128), mesh=mesh) == PS(None, "tensor")  # not divisible
    assert S.logical_to_spec(("batch", None), mesh=mesh) == PS(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="both map to mesh axis 'tensor'"):
        S.logical_to_spec(("mlp", "heads"), (8, 8), mesh=mesh)
    with pytest.raises(KeyError, match="logical axis 'bogus' has no sharding rule"):
        S.logical_to_spec(("bogus",))


def test_sharded_init_and_forward_equal_single_device():
    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=2, fsdp=2, tensor=2))
    abstract = nnx.eval_shape(lambda: Thinker(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    shardings = S.state_shardings(abs_state, mesh)

    @jax.jit
    def init():
        return nnx.state(Thinker(cfg, rngs=nnx.Rngs(0)))

    state = jax.jit(init, out_shardings=shardings)()
    q = state["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    assert q[...].sharding.spec == PS("fsdp", "tensor")
    model = nnx.merge(graphdef, state)
    ref = Thinker(cfg, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(1, 400, (4, 16))
    inputs = prepare_inputs(cfg, ids)
    data_sh = S.batch_sharding(mesh, 2)
    inputs_sharded = dict(inputs, input_ids=jax.device_put(inputs["input_ids"], data_sh),
                          attention_mask=jax.device_put(inputs["attention_mask"], data_sh))
    out = nnx.jit(lambda m, x: m.forward(x))(model, inputs_sharded)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref.forward(inputs)), atol=1e-5)


@pytest.mark.parametrize("mesh_cfg, kv_heads, want", [
    (S.MeshConfig(data=1, fsdp=8), 2, '[{"fsdp"}, {}, {}, {}]'),  # FSDP: batch over fsdp, heads whole
    (S.MeshConfig(data=2, fsdp=2, tensor=2), 2, '[{"data", "fsdp"}, {}, {"tensor"}, {}]'),  # heads on tensor too
    (S.MeshConfig(data=2, fsdp=1, tensor=4), 2, '[{"data"}, {}, {}, {}]'),  # 2 kv heads do not divide 4: none
])
def test_attention_inputs_share_one_sharding(mesh_cfg, kv_heads, want):
    """cuDNN's partitioner needs q, k and v on one sharding (under FSDP they differed and compile failed); the
    attention entry pins all three, heads over tensor only when both head counts divide it."""
    L.register_attention_backend("record", lambda q, k, v, **_: q * (k.sum() + v.sum()))
    mesh = S.make_mesh(mesh_cfg)
    q, k, v = jnp.zeros((8, 4, 8, 16)), jnp.zeros((8, 4, kv_heads, 16)), jnp.ones((8, 4, kv_heads, 16))

    def fn(q, k, v):
        return L.attention(q, k, v, scale=1.0, backend="record")

    with S.activations_on(mesh):
        text = jax.jit(fn).lower(q, k, v).as_text()
    pinned = [line.split("<@mesh, ")[1].split("]>")[0] + "]" for line in text.splitlines()
              if "sdy.sharding_constraint" in line]
    assert pinned == [want] * 3, text
    def fresh(q, k, v):  # a new function: jax caches traces per function, and the context is not in its key
        return L.attention(q, k, v, scale=1.0, backend="record")

    assert "sharding_constraint" not in jax.jit(fresh).lower(q, k, v).as_text()  # outside the context: untouched


def _constraint_lines(fn, *args) -> list[str]:
    """The sharding constraints in `nnx.jit(fn)`'s lowering of `args`."""
    return [line for line in nnx.jit(fn).lower(*args).as_text().splitlines() if "sdy.sharding_constraint" in line]


def test_weight_compute_rules_drop_the_batch_axes():
    rules = S.weight_compute_rules()
    assert rules["embed"] is None and rules["mlp"] == "tensor" and rules["batch"] is None
    custom = S.weight_compute_rules({"batch": "data", "embed": ("data", "tensor"), "mlp": None})
    assert custom == {"batch": None, "embed": "tensor", "mlp": None}


@pytest.mark.parametrize("mesh_cfg, want", [
    (S.MeshConfig(data=1, fsdp=8), "[{}, {}]"),  # FSDP: gathered whole where it is used
    (S.MeshConfig(data=2, fsdp=2, tensor=2), '[{}, {"tensor"}]'),  # tensor parallel split stays
])
def test_weights_are_gathered_where_used(mesh_cfg, want):
    """Under FSDP a layer computes with the whole weight (ZeRO-3): pinned to the table less the batch axes, so XLA
    all-gathers the stored shard instead of splitting the matmul and reduce-scattering partial activations."""
    lin = L.Linear(16, 32, use_bias=False, axes=(L.EMBED, L.MLP), dtype="float32", param_dtype="float32",
                   rngs=nnx.Rngs(0))
    mesh = S.make_mesh(mesh_cfg)

    with S.activations_on(mesh):
        lines = _constraint_lines(lambda m, x: m(x), lin, jnp.ones((8, 16)))
    pinned = [line.split("<@mesh, ")[1].split("]>")[0] + "]" for line in lines]
    assert pinned == [want], lines


def test_decode_steps_and_lookups_leave_weights_stored():
    """One-token decode steps (`weights_as_stored`) and embedding lookups move activations, not whole weights; the
    output head (`attend`) gathers its table, cast to the compute dtype first (half the bytes of fp32)."""
    mesh = S.make_mesh(S.MeshConfig(data=1, fsdp=8))
    lin = L.Linear(16, 32, use_bias=False, axes=(L.EMBED, L.MLP), dtype="bfloat16", param_dtype="float32",
                   rngs=nnx.Rngs(0))
    emb = L.Embed(64, 16, dtype="bfloat16", param_dtype="float32", rngs=nnx.Rngs(0))

    with S.activations_on(mesh):
        pinned = _constraint_lines(lambda m, x: m(x), lin, jnp.ones((8, 16)))
        assert len(pinned) == 1 and "bf16" in pinned[0]  # cast, then gathered
        with L.weights_as_stored():
            assert _constraint_lines(lambda m, x: m(x), lin, jnp.ones((8, 16))) == []
        assert _constraint_lines(lambda e, ids: e(ids), emb, jnp.ones((8, 4), jnp.int32)) == []
        assert len(_constraint_lines(lambda e, x: e.attend(x), emb, jnp.ones((8, 16)))) == 1
