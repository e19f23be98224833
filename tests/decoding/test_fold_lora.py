"""The decode loop folds LoRA branches into their kernels (`SamplingConfig.fold_lora`): the same tokens and
log-probs as the unfolded branch (fp32), the caller's model keeps its branch, and the loop's step runs one matmul
per projection."""

import jax
import numpy as np
from flax import nnx

from omnirrm_jax.decoding import sampler as SM
from omnirrm_jax.models import config as C
from omnirrm_jax.models import layers as L
from omnirrm_jax.models import thinker as thinker_lib


def _model_with_lora():
    cfg = C.tiny(dtype="float32", param_dtype="float32")
    model = thinker_lib.Thinker(cfg, rngs=nnx.Rngs(0))
    rngs = nnx.Rngs(1)
    linears = [m for _, m in nnx.iter_graph(model) if isinstance(m, L.Linear)]
    for i, lin in enumerate(linears):
        if i % 2 == 0:  # every other projection: the folded and the plain kind side by side
            lin.add_lora(4, 8.0, rngs)
            lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), lin.lora_b.shape)
    return cfg, model


def test_linear_fold_gives_the_branchs_output():
    lin = L.Linear(16, 24, use_bias=True, axes=(L.EMBED, L.MLP), dtype="float32", param_dtype="float32",
                   rngs=nnx.Rngs(0))
    lin.add_lora(4, 8.0, nnx.Rngs(1))
    lin.lora_b[...] = jax.random.normal(jax.random.key(2), lin.lora_b.shape)
    x = jax.random.normal(jax.random.key(3), (5, 16))
    with jax.default_matmul_precision("highest"):
        want = lin(x)
        lin.fold_lora()
        got = lin(x)
    assert lin.lora_a is None and lin.lora_b is None
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _inputs(cfg):
    ids = np.random.default_rng(0).integers(1, 400, (2, 9))
    ids[1, :3] = 0
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    return thinker_lib.prepare_inputs(cfg, ids, attention_mask=mask)


def test_folded_decode_samples_what_the_branch_samples():
    cfg, model = _model_with_lora()
    inputs = _inputs(cfg)
    before = jax.tree.map(np.array, nnx.state(model))
    out = {}
    with jax.default_matmul_precision("highest"):
        for fold in (True, False):
            sampling = SM.SamplingConfig(max_new_tokens=12, num_samples=2, stop_token_ids=(), fold_lora=fold,
                                         top_k=20, top_p=0.9)
            out[fold] = SM.generate(model, inputs, sampling, jax.random.key(7))
    np.testing.assert_array_equal(out[True].tokens, out[False].tokens)
    np.testing.assert_allclose(out[True].logprobs, out[False].logprobs, atol=2e-5)
    # the caller's model keeps its kernels and branches (the fold happened on a copy), also run eagerly
    with jax.disable_jit():
        SM.decode(model, SM.prefill(model, inputs), SM.SamplingConfig(max_new_tokens=2, num_samples=2,
                                                                     stop_token_ids=()), jax.random.key(7))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, nnx.state(model)))


def _decode_dots(model, cfg, fold: bool) -> int:
    """dot_general equations of the decode loop's body (its layers are unrolled into it)."""
    inputs = _inputs(cfg)
    pre = SM.prefill(model, inputs)
    sampling = SM.SamplingConfig(max_new_tokens=4, greedy=True, stop_token_ids=(), fold_lora=fold)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s: SM._decode(nnx.merge(graphdef, s), pre, jax.random.key(0), sampling))(state)
    loop = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "while")
    body = loop.params["body_jaxpr"].jaxpr
    return sum(e.primitive.name == "dot_general" for e in body.eqns)

def test_the_folded_loop_runs_one_matmul_per_projection():
    cfg, model = _model_with_lora()
    n_lora = sum(m.lora_a is not None for _, m in nnx.iter_graph(model.model) if isinstance(m, L.Linear))
    assert n_lora > 0
    unfolded, folded = _decode_dots(model, cfg, False), _decode_dots(model, cfg, True)
    assert unfolded - folded == 2 * n_lora, (unfolded, folded, n_lora)
