"""`models.abstract`: the abstract thinker equals `nnx.eval_shape`'s, built without walking the trace once per
parameter (the quadratic probe); only the thread inside the block loses the origin sentence of tracer errors."""

import threading

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from omnirrm_jax.models import abstract
from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora


def _build():
    model = Thinker(C.tiny(dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    lora.apply_lora(model, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    return model


def _walks(monkeypatch) -> list:
    pe = pytest.importorskip("jax._src.interpreters.partial_eval")
    calls = []
    walk = pe.JaxprStackFrame.find_progenitors
    monkeypatch.setattr(pe.JaxprStackFrame, "find_progenitors", lambda self, *a: calls.append(1) or walk(self, *a))
    return calls


def test_abstract_model_equals_nnx_eval_shape_without_walking_the_trace(monkeypatch):
    calls = _walks(monkeypatch)
    want = nnx.eval_shape(_build)
    if not calls:
        pytest.skip("nnx.eval_shape no longer walks the trace per assignment: models.abstract may be unnecessary")
    calls.clear()
    got = abstract.eval_shape(_build)
    assert calls == []
    assert nnx.graphdef(got) == nnx.graphdef(want)
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), nnx.state(got), nnx.state(want))
    assert all(jax.tree.leaves(same))


def _message() -> str:
    def bad(x):
        return jnp.zeros(int(x))  # a concrete value needed from a traced one

    with pytest.raises(jax.errors.ConcretizationTypeError) as e:
        jax.jit(bad)(3.0)
    return str(e.value)


def test_only_the_thread_inside_the_block_loses_the_origin():
    origin = "depends on the value"
    assert origin in _message()
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["other"] = _message()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with abstract.skip_origin_walk(), abstract.skip_origin_walk():  # nested
        seen["inner"] = _message()
        inside.set()
        done.wait(60)
    t.join()
    assert origin not in seen["inner"] and origin in seen["other"]
    assert origin in _message()  # named again after the block
