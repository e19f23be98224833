"""`models.abstract`: the abstract thinker equals `nnx.eval_shape`'s, built without walking the trace once per
parameter (the quadratic probe), and tracers' error messages name their origin again afterwards."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval as pe

from omnirrm_jax.models import abstract
from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora


def _build():
    model = Thinker(C.tiny(dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    return model


def _walks(monkeypatch) -> list:
    calls = []
    walk = pe.JaxprStackFrame.find_progenitors
    monkeypatch.setattr(pe.JaxprStackFrame, "find_progenitors",
                        lambda self, *a: calls.append(1) or walk(self, *a))
    return calls


def test_abstract_model_equals_nnx_eval_shape_without_walking_the_trace(monkeypatch):
    calls = _walks(monkeypatch)
    want = nnx.eval_shape(_build)
    assert calls, "nnx.eval_shape no longer probes the tracers: models.abstract may be unnecessary"
    calls.clear()
    got = abstract.eval_shape(_build)
    assert calls == []
    assert nnx.graphdef(got) == nnx.graphdef(want)
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), nnx.state(got), nnx.state(want))
    assert all(jax.tree.leaves(same))


def test_origins_are_named_again_after_the_block():
    with abstract.skip_origin_walk(), abstract.skip_origin_walk():  # nested: the outer one restores
        pass
    assert "_origin_msg" in pe.DynamicJaxprTracer.__dict__

    def bad(x):
        return jnp.zeros(int(x))  # a concrete value needed from a traced one

    with pytest.raises(jax.errors.ConcretizationTypeError, match="depends on the value"):
        jax.jit(bad)(3.0)
