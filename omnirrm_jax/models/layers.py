"""Building blocks shared by the three towers: linear (with an optional LoRA branch), norms, embeddings,
and the single place where the attention kernel is chosen.

Dimension letters used in variable names across `models/`:
  B batch, T query tokens, S key/value tokens, D model width, N query heads, K kv heads, H head dim,
  F feed-forward width, V vocab, P patches, M mel frames, C chunks, G generations.

Every parameter carries logical axis names in its `out_sharding` metadata (eager sharding off); the
training code maps them to mesh axes through one table (`parallel/sharding.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from omnirrm_jax.models.abstract import skip_origin_walk

# Logical axis names. One vocabulary for all towers keeps the sharding table small.
EMBED = "embed"  # model width of the tower (D)
MLP = "mlp"  # feed-forward width (F)
HEADS = "heads"  # query heads x head dim (fused)
KV_HEADS = "kv_heads"  # kv heads x head dim (fused)
VOCAB = "vocab"
NORM = "norm"  # 1-D scales/biases: kept replicated
CONV = "conv"  # conv window / patch input rows: replicated
LORA_RANK = "lora_rank"
BATCH = "batch"  # batch dim of activations (the training code's table maps it, e.g. to data x fsdp)


def param(value: jax.Array, axes: tuple[str | None, ...], kind: type[nnx.Variable] = nnx.Param) -> nnx.Variable:
    """A variable annotated with logical axes, without sharding it now (sharding happens under jit)."""
    if len(axes) != value.ndim:
        raise ValueError(f"axes {axes} do not match a value of shape {value.shape}")
    return kind(value, out_sharding=axes, eager_sharding=False)


# ---- parameter initialisation, optionally born sharded -------------------------------------------------------

_INIT_PLACEMENT: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("init_placement", default=None)
_PLACED_INITS: dict = {}  # (initializer, shape, dtype, sharding) -> its jitted program


@contextlib.contextmanager
def init_placement(resolve: Callable | None):
    """While a model is built under this, every parameter is drawn by a small jitted program whose output is born
    on `resolve(axes, shape)` (a `jax.sharding.Sharding`), so no weight is ever whole on one device unless its
    sharding says so. One program per (initializer, shape, sharding): a 3B model's few dozen, not one program for
    the whole init (which takes minutes to compile). The values are the eager ones, bit for bit (checked on CPU; the
    random bits do not depend on the sharding). The setting is per thread (a ContextVar): a model built in another
    thread draws eagerly."""
    token = _INIT_PLACEMENT.set(resolve)
    try:
        yield
    finally:
        _INIT_PLACEMENT.reset(token)


def init_param(init: Callable, key: jax.Array | None, shape: tuple[int, ...], dtype, axes: tuple[str | None, ...],
               kind: type[nnx.Variable] = nnx.Param) -> nnx.Variable:
    """`param(init(key, shape, dtype), axes, kind)`, placed by the active `init_placement` if any. `init` must be a
    long-lived initializer object (module-level or cached) so its placed program is compiled once."""
    resolve = _INIT_PLACEMENT.get()
    if resolve is None:
        return param(init(key, shape, dtype), axes, kind)
    sharding = resolve(axes, shape)
    cache_key = (init, tuple(shape), jnp.dtype(dtype), sharding)
    program = _PLACED_INITS.get(cache_key)
    if program is None:
        program = _PLACED_INITS[cache_key] = jax.jit(lambda k: init(k, shape, dtype), out_shardings=sharding)
    return param(program(key), axes, kind)


LECUN_NORMAL = nnx.initializers.lecun_normal()


@functools.lru_cache(maxsize=None)
def lora_a_init(fan_in: int) -> Callable:
    """PEFT's LoRA A: kaiming-uniform, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype):
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def as_dtype(name_or_dtype) -> jnp.dtype:
    return jnp.dtype(name_or_dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) (+ scale * x @ lora_a @ lora_b). Kernel is stored (in, out), torch's transpose.

    The LoRA branch is absent until `add_lora` is called; its B factor starts at zero so adding it never
    changes the output (zeroing B in a state gives the base model; the GRPO reference pass drops the branches
    instead, `drop_lora`, and runs no LoRA matmuls).
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, axes: tuple[str, str],
                 dtype: str, param_dtype: str, rngs: nnx.Rngs):
        pdt = as_dtype(param_dtype)
        self.kernel = init_param(LECUN_NORMAL, rngs.params(), (in_features, out_features), pdt, axes)
        self.bias = init_param(nnx.initializers.zeros, None, (out_features,), pdt, (axes[1],)) if use_bias else None
        self.dtype = as_dtype(dtype)
        self.lora_a: nnx.LoRAParam | None = nnx.data(None)
        self.lora_b: nnx.LoRAParam | None = nnx.data(None)
        self.lora_scale = 0.0

    def add_lora(self, rank: int, alpha: float, rngs: nnx.Rngs, dtype: str | None = None) -> None:
        """Attaches a LoRA branch (A random as in PEFT's kaiming-uniform, B zero) with scale alpha / rank."""
        d_in, d_out = self.kernel.shape
        pdt = as_dtype(dtype or self.kernel.dtype)
        axes = self.kernel.get_metadata().get("out_sharding") or (None, None)
        self.lora_a = init_param(lora_a_init(d_in), rngs.params(), (d_in, rank), pdt, (axes[0], LORA_RANK),
                                 nnx.LoRAParam)
        self.lora_b = init_param(nnx.initializers.zeros, None, (rank, d_out), pdt, (LORA_RANK, axes[1]), nnx.LoRAParam)
        self.lora_scale = float(alpha) / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = x @ weight(self.kernel, self.dtype)
        if self.bias is not None:
            y = y + weight(self.bias, self.dtype)
        if self.lora_a is not None:
            # scaled on the rank-r side, not on the (T, out) product: one small multiply instead of a full-width
            # one each way; for a power-of-two scale (PEFT's default alpha 32 / r 8) bitwise `(x @ A @ B) * s`
            u = (x @ weight(self.lora_a, self.dtype)) * jnp.asarray(self.lora_scale, self.dtype)
            y = y + u @ weight(self.lora_b, self.dtype)
        return y

    def fold_lora(self) -> None:
        """Adds the LoRA product into the kernel and drops the branch, in place: for a model merged inside a traced
        function (a decode loop), where each one-token step then runs one matmul per projection instead of three.
        The sum is taken in fp32 and rounded once to the kernel's dtype, so outputs differ from the branch's by
        that rounding only (vLLM-backed trainers merge adapters the same way). `lora_io.merge_lora` is the host-side
        counterpart for export, with the same arithmetic."""
        if self.lora_a is None:
            return
        kernel = self.kernel[...]
        delta = jnp.matmul(self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
        self.kernel[...] = (kernel.astype(jnp.float32) + self.lora_scale * delta).astype(kernel.dtype)
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_scale = 0.0


def fold_lora(model: nnx.Module) -> None:
    """`Linear.fold_lora` on every linear layer of `model` (in place). Each fold assigns a kernel: traced, without
    `skip_origin_walk` every assignment would walk the whole trace so far (quadratic; `models.abstract`)."""
    with skip_origin_walk():
        for _, node in nnx.iter_graph(model):
            if isinstance(node, Linear):
                node.fold_lora()


def drop_lora(model: nnx.Module) -> None:
    """Removes every LoRA branch of `model` in place, leaving the base model: for a model merged inside a traced
    function (the GRPO reference pass), which then runs no LoRA matmuls at all instead of branches whose zeroed B
    adds exactly nothing."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Linear) and node.lora_a is not None:
            node.lora_a, node.lora_b, node.lora_scale = nnx.data(None), nnx.data(None), 0.0


@functools.lru_cache(maxsize=None)
def normal_init(stddev: float):
    """N(0, stddev^2) initializer whose values do not depend on being traced: the same bits eagerly and inside a
    jitted, sharded init (`init_placement`), so a run's starting weights stay bitwise those of
    `Thinker(cfg, rngs=...)`. (`nnx.initializers.normal` multiplies by `stddev` after the draw; under `jax.jit` XLA
    fuses that multiply into the draw's arithmetic and rounds differently.)"""

    def init(key, shape, dtype=jnp.float32):
        return jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype)) * jnp.asarray(stddev, dtype)
    return init


class Embed(nnx.Module):
    """Token embedding table (V, D); also usable as a tied output projection."""

    def __init__(self, num: int, features: int, *, dtype: str, param_dtype: str, rngs: nnx.Rngs):
        self.embedding = init_param(normal_init(0.02), rngs.params(), (num, features), as_dtype(param_dtype),
                                    (VOCAB, EMBED))
        self.dtype = as_dtype(dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        # the stored table, not `weight`: a lookup under FSDP moves the looked-up rows, not the whole table
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ weight(self.embedding, self.dtype).T


class RMSNorm(nnx.Module):
    """HF Qwen2 RMSNorm: normalise in fp32, cast back to the input dtype, then multiply by the weight."""

    def __init__(self, dim: int, *, eps: float, param_dtype: str):
        self.scale = init_param(nnx.initializers.ones, None, (dim,), as_dtype(param_dtype), (NORM,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm (eps 1e-5 by default, as the audio tower uses): fp32 statistics, input dtype out."""

    def __init__(self, dim: int, *, eps: float = 1e-5, param_dtype: str):
        self.scale = init_param(nnx.initializers.ones, None, (dim,), as_dtype(param_dtype), (NORM,))
        self.bias = init_param(nnx.initializers.zeros, None, (dim,), as_dtype(param_dtype), (NORM,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def gelu_exact(x: jax.Array) -> jax.Array:
    """The erf GELU that torch uses by default (jax.nn.gelu defaults to the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


def rotate_half(x: jax.Array) -> jax.Array:
    """NeoX convention: (x1, x2) -> (-x2, x1) over the two halves of the last axis, written as a reversal of the
    halves times (-1, 1): the same values bit for bit as concatenating them, as an index map XLA can fuse (session 21
    suspected the GRPO update's `wrapped_concatenate` kernels here; the profile showed them elsewhere)."""
    *lead, H = x.shape
    halves = jax.lax.rev(x.reshape(*lead, 2, H // 2), (x.ndim - 1,))
    sign = jnp.asarray([[-1], [1]], x.dtype)
    return (halves * sign).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------
# Attention: the one place that picks a kernel.
# ----------------------------------------------------------------------------------------------------

AttentionFn = Callable[..., jax.Array]
_BACKENDS: dict[str, AttentionFn] = {}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Registers a kernel (e.g. a Pallas splash-attention wrapper on TPU) under `name`.

    `fn(q_BTNH, k_BSKH, v_BSKH, *, mask_BTS, is_causal, scale) -> out_BTNH` must accept grouped kv heads.
    Registering "tpu" makes `attention_backend="auto"` use it on TPU.
    """
    _BACKENDS[name] = fn


def _xla_attention(q, k, v, *, mask, is_causal, scale):
    """Reference math: logits in fp32, softmax in fp32 (as HF eager), grouped kv heads without copies."""
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if is_causal:
        causal = jnp.tril(jnp.ones((T, k.shape[1]), bool), k=k.shape[1] - T)
        mask = causal[None] if mask is None else mask & causal[None]
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(B, T, N, H)


def _cudnn_attention(q, k, v, *, mask, is_causal, scale):
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                        is_causal=is_causal, scale=scale, implementation="cudnn")


register_attention_backend("xla", _xla_attention)
register_attention_backend("cudnn", _cudnn_attention)


class PackedRows(NamedTuple):
    """Packed training rows (`data.packing`): `ids_BT` 1..k the examples of a row, 0 the padding after them;
    `lengths_BM` the tokens of segments 1..k (0 past the last), segments contiguous from the row's start, or None.
    A token attends causally within its own segment."""
    ids_BT: jax.Array
    lengths_BM: jax.Array | None = None


def packed_mask(ids_BT: jax.Array) -> jax.Array:
    """(B, T, T): causal within a segment (padding, segment 0, sees earlier padding only)."""
    T = ids_BT.shape[1]
    return jnp.tril(jnp.ones((T, T), bool))[None] & (ids_BT[:, :, None] == ids_BT[:, None, :])


def packed_runs(packed: PackedRows) -> tuple[jax.Array, jax.Array, jax.Array]:
    """cuDNN's packed layout of the rows: (lengths (B, M+1), offsets (B, M+2), consistent (B,)).

    A row's sequences are its segments, then its padding as one more (so every position is some sequence's and
    gets a defined output); an empty slot is -1. `consistent` is False for a row whose segment ids are not the
    contiguous runs its lengths describe (the caller poisons that row's output rather than attend wrongly).
    """
    ids_BT, lengths_BM = packed
    B, T = ids_BT.shape
    lengths_BM = lengths_BM.astype(jnp.int32)
    ends_BM = jnp.cumsum(lengths_BM, axis=1)
    runs = jnp.concatenate([lengths_BM, T - ends_BM[:, -1:]], axis=1)
    used = runs > 0
    starts = jnp.cumsum(runs, axis=1) - runs
    seqlens = jnp.where(used, runs, -1)
    offsets = jnp.concatenate([jnp.where(used, starts, -1), jnp.full((B, 1), -1, jnp.int32)], axis=1)
    t_T = jnp.arange(T, dtype=jnp.int32)
    implied_BT = jnp.sum(t_T[None, :, None] >= ends_BM[:, None, :], axis=-1, dtype=jnp.int32) + 1
    implied_BT = jnp.where(t_T[None] < ends_BM[:, -1:], implied_BT, 0)
    consistent = jnp.all(implied_BT == ids_BT, axis=1) & (runs[:, -1] >= 0) & jnp.all(lengths_BM >= 0, axis=1)
    return seqlens, offsets, consistent


def _cudnn_packed_attention(q, k, v, *, packed: PackedRows, scale, repeat_kv: bool = False):
    """Each segment as its own causal sequence in cuDNN's packed (ragged) layout: no (B, 1, T, T) bias to read, and
    no work on the blocks a segment mask would drop. `repeat_kv` gives k/v one head per query head (for a cuDNN
    whose packed offsets assume the query's head count)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_sdpa

    seqlens, offsets, consistent = packed_runs(packed)
    seqlens, offsets = constrain(seqlens, (BATCH, None)), constrain(offsets, (BATCH, None))
    repeat_kv = repeat_kv or not _cudnn_packed_kv_offsets_exact()
    if repeat_kv and k.shape[2] != q.shape[2]:
        groups = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    out = cudnn_sdpa(q, k, v, q_seqlen=seqlens, kv_seqlen=seqlens, q_offsets=offsets, kv_offsets=offsets,
                     scale=scale, mask_type=MaskType.PADDING_CAUSAL, qkv_layout="BTNH")
    return jnp.where(consistent[:, None, None, None], out, jnp.nan)


@functools.cache
def _cudnn_packed_kv_offsets_exact() -> bool:
    """Whether this JAX scales packed key/value offsets by the keys' own head count. Older releases used the
    query's, so with grouped kv heads every segment after the first read the wrong keys: probed on the pure
    function that computes them (2 query heads, 1 kv head: a segment at token 2 starts at element 2)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as F

        offsets = jnp.asarray([[0, 2, -1]], jnp.int32)
        seqlens = jnp.asarray([[2, 2]], jnp.int32)
        _, _, _, kv = F._fix_seqlen_offsets(seqlens, seqlens, offsets, offsets, jnp.zeros((1, 4, 2, 1)),
                                            jnp.zeros((1, 4, 1, 1)))
        return int(kv.reshape(-1)[1]) == 2
    except Exception:  # noqa: BLE001 - a JAX whose internals moved: repeat the kv heads, which is right anyway
        return False


@functools.cache
def _cudnn_packed_layout_supported() -> bool:
    """cuDNN's packed layout needs Hopper (compute capability 9.0) or newer; older GPUs keep the segment mask."""
    try:
        return float(getattr(jax.devices()[0], "compute_capability", "0")) >= 9.0
    except (TypeError, ValueError):
        return False


# Backends with a native packed-rows path, `fn(q, k, v, *, packed, scale)`, and when it applies; the others (and
# these where it does not) get `packed_mask`.
_PACKED_BACKENDS: dict[str, AttentionFn] = {"cudnn": _cudnn_packed_attention}
_PACKED_SUPPORTED: dict[str, Callable[[], bool]] = {"cudnn": _cudnn_packed_layout_supported}


def resolve_backend(name: str, dtype) -> str:
    """"auto" -> cuDNN flash for 16-bit compute on GPU, a registered "tpu" kernel on TPU, else XLA."""
    if name != "auto":
        if name not in _BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_BACKENDS)}")
        return name
    platform = jax.default_backend()
    if platform == "gpu" and as_dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if platform == "tpu" and "tpu" in _BACKENDS:
        return "tpu"
    return "xla"


SHARED_PREFIX_BACKENDS = ("pallas", "xla")  # implemented in `decoding.shared_prefix`


def resolve_shared_prefix_backend(name: str, *, num_samples: int, num_heads: int, num_kv_heads: int, head_dim: int,
                                  auto_max_query_rows: int, auto_head_dim: int) -> str:
    """The decode attention of G samples over one copy of their prompt (`decoding.shared_prefix`): "pallas", its
    fused GPU kernel, or "xla", einsums (any shape, any platform). An explicit name is kept; "auto" -> "pallas" on
    one GPU (the kernel is not partitioned over a mesh) where its layout holds (G > 1 a power of two, whole query
    heads per kv head) and the shape lies within what it was measured at: at most `auto_max_query_rows` query rows
    per (prompt, kv head) (G x query heads per kv head) of head size `auto_head_dim`; else "xla"."""
    if name != "auto":
        if name not in SHARED_PREFIX_BACKENDS:
            raise ValueError(f"unknown shared-prefix attention backend {name!r}; known: auto, "
                             f"{', '.join(SHARED_PREFIX_BACKENDS)}")
        return name
    G = num_samples
    measured = (num_heads % num_kv_heads == 0 and G * (num_heads // num_kv_heads) <= auto_max_query_rows
                and head_dim == auto_head_dim)
    one_gpu = jax.default_backend() == "gpu" and jax.device_count() == 1
    return "pallas" if one_gpu and G > 1 and G & (G - 1) == 0 and measured else "xla"


# ----------------------------------------------------------------------------------------------------
# Activation sharding: the model names the axes of a few activations; whoever traces it under a mesh decides
# where they live (`parallel/sharding.py` installs its table with `activation_sharding`). Outside that
# context `constrain` is the identity, so the model itself never needs a mesh.
# ----------------------------------------------------------------------------------------------------

_ACTIVATION_SHARDING: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("activation_sharding",
                                                                                      default=None)
_GATHER_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("gather_weights", default=True)


@contextlib.contextmanager
def activation_sharding(resolve: Callable | None):
    """While a function is traced under this, `constrain(x, axes)` pins x to `resolve(axes, x.shape)` (a
    `jax.sharding.Sharding`) and `weight(var)` pins a parameter to `resolve(axes, shape, weight=True)`, the
    layout it is computed in."""
    token = _ACTIVATION_SHARDING.set(resolve)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    resolve = _ACTIVATION_SHARDING.get()
    return x if resolve is None else jax.lax.with_sharding_constraint(x, resolve(axes, x.shape))


@contextlib.contextmanager
def weights_as_stored():
    """`weight` leaves parameters in their stored layout while a function is traced under this: for one-token
    decode steps, where gathering every FSDP-split weight per token would move far more than the activations."""
    token = _GATHER_WEIGHTS.set(False)
    try:
        yield
    finally:
        _GATHER_WEIGHTS.reset(token)


def weight(var: nnx.Variable, dtype=None) -> jax.Array:
    """A parameter's value (cast to `dtype` first, so a gather moves compute-dtype bytes) in the layout its layer
    computes with. Under FSDP the stored weight is split over the data axes and the table gathers it whole here,
    once per use: without this XLA may instead split the matmul over the sharded contraction and reduce-scatter
    partial activations, several times the traffic (ZeRO-3)."""
    value = var[...] if dtype is None else var[...].astype(dtype)
    resolve = _ACTIVATION_SHARDING.get()
    axes = var.get_metadata().get("out_sharding")
    if resolve is None or not _GATHER_WEIGHTS.get() or axes is None or len(axes) != value.ndim:
        return value
    return jax.lax.with_sharding_constraint(value, resolve(tuple(axes), value.shape, weight=True))


def _constrain_qkv(q, k, v):
    """Queries, keys and values on one sharding: batch over the data axes, heads over tensor when both the query
    and the kv heads divide it. cuDNN's partitioner rejects differing ones (FSDP left q and k/v on different
    shardings: "Query, key and value should have same sharding")."""
    resolve = _ACTIVATION_SHARDING.get()
    if resolve is None:
        return q, k, v
    kv = resolve((BATCH, None, KV_HEADS, None), k.shape)
    heads = HEADS if kv.spec[2:3] not in ((), (None,)) else None
    if heads is not None and resolve((BATCH, None, HEADS, None), q.shape).spec[2:3] != kv.spec[2:3]:
        heads = None
    q = constrain(q, (BATCH, None, heads, None))
    axes = (BATCH, None, KV_HEADS if heads else None, None)
    return q, constrain(k, axes), constrain(v, axes)


def attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, *, mask_BTS: jax.Array | None = None,
              is_causal: bool = False, packed: PackedRows | None = None, scale: float,
              backend: str = "auto") -> jax.Array:
    """Multi-head attention with grouped kv heads. `mask_BTS` is True where a query may see a key;
    `is_causal` aligns the causal diagonal to the end of the keys (cached decoding).

    Packed SFT rows (`packed`, no other mask): cuDNN runs each segment as its own sequence where the segment
    lengths are known; otherwise the backend gets the causal-and-same-segment mask (`packed_mask`), which cuDNN
    reads as a dense (B, 1, T, T) bias."""
    name = resolve_backend(backend, q_BTNH.dtype)
    q_BTNH, k_BSKH, v_BSKH = _constrain_qkv(q_BTNH, k_BSKH, v_BSKH)
    if packed is not None:
        if mask_BTS is not None or is_causal:
            raise ValueError("packed rows carry their own mask: pass neither mask_BTS nor is_causal with them")
        if name in _PACKED_BACKENDS and packed.lengths_BM is not None and _PACKED_SUPPORTED[name]():
            return _PACKED_BACKENDS[name](q_BTNH, k_BSKH, v_BSKH, packed=packed, scale=scale)
        mask_BTS = packed_mask(packed.ids_BT)
    return _BACKENDS[name](q_BTNH, k_BSKH, v_BSKH, mask=mask_BTS, is_causal=is_causal, scale=scale)
