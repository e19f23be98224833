"""Batched autoregressive decoding for the thinker: one multimodal prefill, G samples per prompt.

GRPO draws G judgements per prompt and needs, for each sampled token, its log-probability under the
distribution it was drawn from. Running the vision/audio towers and the prompt G times would multiply
the most expensive part of a rollout by G, so `prefill` runs the B prompts once and `decode` samples all
B*G rows (each prompt's samples adjacent) in one `lax.while_loop`. The G samples of a prompt either read one
shared copy of its KV cache (`decoding.shared_prefix`: on one GPU, a Pallas kernel) or a copy each (`cache`).
Two jitted programs: the prefill's shapes depend on the media shapes, the decode loop's only on
(B, S, G, N) and the `SamplingConfig`, so a rollout loop over bucketed shapes never recompiles; the
model's parameters are jit arguments, not constants baked into a program.

Sampling reproduces transformers' `generate(do_sample=True, temperature, top_k, top_p)`: the warpers
run in HF's order (temperature, then top-k, then top-p with `min_tokens_to_keep=1`) on fp32 logits.
Positions of generated tokens continue from the last real prompt position (+1 per step on all three
mRoPE axes), as transformers 5 `generate` does (`rope.continue_positions`).

An optional token automaton (`constrained.TokenConstraint`) rides in the loop carry as one int32 state per
row; it masks the logits before the warpers (see `constrained` for why and how).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from omnirrm_jax.decoding import cache as cache_lib
from omnirrm_jax.decoding import top_k_draw
from omnirrm_jax.models import layers as L
from omnirrm_jax.models.flat_state import unflat
from omnirrm_jax.models.config import IM_END_ID, PAD_ID

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to decode. Hashable: it is a static argument of the compiled program (a new value compiles anew).

    top_k = 0 and top_p = 1.0 switch those filters off; `greedy` ignores temperature/top-k/top-p as HF's
    `do_sample=False` does. `stop_token_ids` end a row (the stop token is kept, then `pad_token_id`).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    greedy: bool = False
    num_samples: int = 1
    stop_token_ids: tuple[int, ...] = (IM_END_ID,)
    pad_token_id: int = PAD_ID
    # G > 1: "on" = the G samples read one copy of the prompt's keys/values (`decoding.shared_prefix`), "off" = a
    # copy per sample, "auto" = on where `shared_prefix_kernel` resolves to the GPU kernel, else off
    shared_prefix: str = "auto"
    # The shared copy's attention, chosen where the other attention kernels are
    # (`models.layers.resolve_shared_prefix_backend`): "pallas" = the fused kernel (interpreted off GPU: tests),
    # "xla" = einsums, "auto" = the kernel on one GPU (G > 1 a power of two) for shapes within the two fields
    # below, else einsums. Their defaults are the shapes the kernel was measured at on an H100 (docs/PERFORMANCE.md,
    # Decoding, sessions 8 and 19: 18 / 23 / 35 us per layer at 16 / 256 / 500 filled suffix tokens against cuDNN's
    # 48 / 51 / 45 over the repeated cache, 8 prompts x G=8): a query block of at most 64 rows (G x query heads per kv head: the 3B and the 7B up to G = 8) of head
    # size 128; larger blocks would need tiling over the grid (untried).
    shared_prefix_kernel: str = "auto"
    shared_prefix_kernel_max_rows: int = 64
    shared_prefix_kernel_head_dim: int = 128
    # With top-k on: "candidates" draws among the top-k candidates (`decoding.top_k_draw`: no vocab-wide sort or
    # noise), "vocab" masks the whole vocabulary and draws from it (`filter_logits`); the same distribution, kept
    # to compare them (`omnirrm bench decode --draws candidates,vocab`).
    draw: str = "candidates"
    # True: `temperature` is not a constant of the program but a per-row array passed to `generate` / `decode`
    # (`RowSampling`), and so is top_p unless `top_p` here is 1.0, which switches top-p off for every row (the rows'
    # values are then not read: no sort over the vocabulary). One compiled program serves every value, and rows
    # with different values share a batch (the server's chat).
    per_row: bool = False
    # True: the decode loop adds each LoRA product into its kernel once before the first step (`L.fold_lora`, in
    # fp32, rounded to the kernel's dtype), so a step runs one matmul per projection instead of three; sampled
    # tokens then differ from the unfolded branch only where that rounding flips a draw. The folded kernels are new
    # buffers beside the stored ones while the loop runs (one more copy of every LoRA-targeted kernel: about 13 GB
    # for the 7B's language model); False keeps the branch and that memory.
    fold_lora: bool = True

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.shared_prefix not in ("auto", "on", "off"):
            raise ValueError(f"shared_prefix must be auto, on or off, got {self.shared_prefix!r}")
        if self.shared_prefix_kernel not in ("auto", "pallas", "xla"):
            raise ValueError(f"shared_prefix_kernel must be auto, pallas or xla, got {self.shared_prefix_kernel!r}")
        if self.draw not in ("candidates", "vocab"):
            raise ValueError(f"draw must be candidates or vocab, got {self.draw!r}")
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) and num_samples ({self.num_samples}) "
                             "must be >= 1")
        if not self.greedy:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0 for sampling (got {self.temperature}); use greedy=True")
            if not 0.0 <= self.top_p <= 1.0:
                raise ValueError(f"top_p must lie in [0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


@struct.dataclass
class RowSampling:
    """Per-prompt temperature and top_p (B,) float32, for a `SamplingConfig(per_row=True)` (traced, not static)."""

    temperature: jax.Array
    top_p: jax.Array

    @classmethod
    def make(cls, temperature, top_p) -> "RowSampling":
        t, p = np.asarray(temperature, np.float32), np.asarray(top_p, np.float32)
        if t.ndim != 1 or t.shape != p.shape:
            raise ValueError(f"RowSampling needs two (B,) arrays, got {t.shape} and {p.shape}")
        if not (t > 0).all() or not ((p >= 0) & (p <= 1)).all():
            raise ValueError("RowSampling: every temperature must be > 0 (greedy is its own program) and every "
                             "top_p in [0, 1]")
        return cls(temperature=jnp.asarray(t), top_p=jnp.asarray(p))


@struct.dataclass
class GenerationResult:
    """tokens/logprobs (B, G, N): generated ids (pad after the stop token) and their log-probabilities under
    the distribution sampled from (0 after the stop); lengths (B, G): tokens up to and including the stop
    token (N when none came); finished (B, G): a stop token was emitted."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finished: jax.Array


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

def filter_logits(logits_RV: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Log-probabilities (fp32) of the distribution HF samples from: -inf outside the kept support.

    Mirrors `TemperatureLogitsWarper` -> `TopKLogitsWarper` -> `TopPLogitsWarper` (HF skips a warper at
    temperature 1, top_k 0, top_p 1). Top-k keeps every token >= the k-th largest (ties kept, as HF).
    Top-p keeps token i when the mass of the tokens with logit <= x_i exceeds 1 - top_p (HF's ascending
    cumsum `<= 1 - top_p` removes), and always the most probable token (`min_tokens_to_keep=1`). Without
    ties this is HF's set exactly. Among tokens tied at the boundary HF keeps those its `torch.sort` happens
    to put last, and that sort is unstable for vocab-sized rows, so there is no order to copy: we keep the
    whole tied group (a superset of any HF outcome, and independent of token order). Static shapes: a
    sort over the vocab, or only over the top-k window when top-k is on (outside it all mass is zero but
    that of tokens tied with the k-th, added to every tail).
    """
    x = jnp.asarray(logits_RV).astype(jnp.float32)
    if not top_k_draw.is_one(temperature):
        x = x / temperature
    V = x.shape[-1]
    desc = None  # candidates in descending order
    if 0 < top_k < V:
        desc = top_k_draw.top_k(x, top_k)[0]
        kth = desc[..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
        # tokens tied with the k-th that the window left out (their mass is below every candidate)
        n_out = jnp.sum(x == kth, -1, keepdims=True) - jnp.sum(desc == kth, -1, keepdims=True)
    if not top_k_draw.is_one(top_p):
        if desc is None:
            desc = -jnp.sort(-x, axis=-1)
        top = desc[..., :1]
        z = jnp.sum(jnp.exp(x - top), -1, keepdims=True)
        probs = jnp.exp(desc - top) / z
        tail = jnp.flip(jnp.cumsum(jnp.flip(probs, -1), -1), -1)  # mass at or below each candidate
        if 0 < top_k < V:
            tail = tail + n_out * jnp.exp(kth - top) / z
        keep = (tail > 1.0 - top_p).at[..., 0].set(True)  # a prefix: tail never increases along desc
        cutoff = jnp.take_along_axis(desc, keep.sum(-1, keepdims=True) - 1, -1)
        x = jnp.where(x < cutoff, -jnp.inf, x)
    return jax.nn.log_softmax(x, axis=-1)


def sample_tokens(key: jax.Array, logits_RV: jax.Array, sampling: SamplingConfig,
                  rows: RowSampling | None = None) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-probability under the distribution used (greedy: plain log-softmax).

    Rows draw independent Gumbel noise from one key, so G copies of a prompt give G independent samples. With
    `sampling.per_row`, `rows` holds each row's temperature and top_p ((R,) arrays).
    """
    temperature, top_p = sampling.temperature, sampling.top_p
    if sampling.per_row and not sampling.greedy:
        temperature = rows.temperature[:, None]
        top_p = 1.0 if sampling.top_p == 1.0 else rows.top_p[:, None]
    if sampling.greedy:
        logits_RV = logits_RV.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits_RV, axis=-1)
        tok = jnp.argmax(logits_RV, axis=-1)  # on the logits, as HF: log-softmax rounding could make ties
    elif sampling.draw == "candidates" and 0 < sampling.top_k < logits_RV.shape[-1]:
        return top_k_draw.sample(key, logits_RV, temperature, sampling.top_k, top_p)
    else:
        logp = filter_logits(logits_RV, temperature, sampling.top_k, top_p)
        tok = jax.random.categorical(key, logp, axis=-1)
    return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], -1)[:, 0]


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------

def _last_positions(position_ids_3BS: jax.Array, mask_BS: jax.Array) -> jax.Array:
    """(3, B) position ids of each row's last real prompt token (generated tokens continue from here)."""
    S = mask_BS.shape[1]
    last_B = S - 1 - jnp.argmax(jnp.flip(mask_BS.astype(bool), 1), axis=1)
    return jnp.take_along_axis(position_ids_3BS, jnp.broadcast_to(last_B[None, :, None], (3, last_B.shape[0], 1)),
                               axis=2)[..., 0]


@struct.dataclass
class Prefill:
    """What the decode loop needs from the prompts: their KV cache (max_len S), the last position's logits
    (B, V) and the mRoPE position ids of each row's last real prompt token (3, B)."""

    cache: cache_lib.KVCache
    logits: jax.Array
    last_positions: jax.Array


def _prefill(model, inputs: dict[str, Any]) -> Prefill:
    mask_BS = jnp.asarray(inputs["attention_mask"])
    B, S = mask_BS.shape
    cache = cache_lib.init_cache(model.config, B, S, prompt_mask_BT=mask_BS)
    # only the last position's logits are needed (no (B, S, V) tensor)
    hidden_BSD, cache = model.forward(inputs, cache=cache, cache_index=0, return_hidden=True)
    last_3B = _last_positions(jnp.asarray(inputs["position_ids"]), mask_BS).astype(jnp.int32)
    return Prefill(cache=cache, logits=model.logits(hidden_BSD[:, -1]), last_positions=last_3B)


def _decode(model, pre: Prefill, rng: jax.Array, sampling: SamplingConfig, constraint=None,
            rows: RowSampling | None = None) -> GenerationResult:
    if sampling.fold_lora:
        L.fold_lora(model)  # `_decode_jit` merges a copy: the caller's model keeps its kernels and branches
    B = pre.logits.shape[0]
    G, N = sampling.num_samples, sampling.max_new_tokens
    R = B * G
    stops = jnp.asarray(sampling.stop_token_ids, jnp.int32).reshape(-1)
    if rows is not None:  # each prompt's values for its G samples
        rows = RowSampling(temperature=jnp.repeat(rows.temperature, G), top_p=jnp.repeat(rows.top_p, G))

    def draw(k, logits_RV, state_R):
        """Token k of every row; with a constraint, masked to its automaton state (N - k - 1 tokens left after)."""
        if constraint is None:
            return (*sample_tokens(jax.random.fold_in(rng, k), logits_RV, sampling, rows), state_R)
        logits_RV = constraint.mask_logits(logits_RV, state_R, N - k - 1)
        tok_R, lp_R = sample_tokens(jax.random.fold_in(rng, k), logits_RV, sampling, rows)
        return tok_R, lp_R, constraint.advance(state_R, tok_R)

    # Fan out to B*G rows (the G samples of a prompt adjacent) and make room for the N new tokens, outside the
    # loop: either one shared copy of each prompt's keys/values (generated token k at position k - 1 of the
    # suffix) or a copy per row (token k at slot S + k - 1).
    S = pre.cache.max_len
    cache = pre.cache
    t = model.config.text
    backend = L.resolve_shared_prefix_backend(
        sampling.shared_prefix_kernel, num_samples=G, num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
        head_dim=t.head_dim, auto_max_query_rows=sampling.shared_prefix_kernel_max_rows,
        auto_head_dim=sampling.shared_prefix_kernel_head_dim)
    if G > 1 and (sampling.shared_prefix == "on" or (sampling.shared_prefix == "auto" and backend == "pallas")):
        cache = cache_lib.shared_prefix_cache(cache, G, N, backend)
        S = 0
    else:
        cache = cache_lib.KVCache(
            k=[jnp.repeat(jnp.pad(a, ((0, 0), (0, N), (0, 0), (0, 0))), G, axis=0) for a in cache.k],
            v=[jnp.repeat(jnp.pad(a, ((0, 0), (0, N), (0, 0), (0, 0))), G, axis=0) for a in cache.v],
            kv_mask=jnp.repeat(jnp.pad(cache.kv_mask.astype(bool), ((0, 0), (0, N)), constant_values=True), G,
                               axis=0))
    logits_RV = jnp.repeat(pre.logits, G, axis=0)
    last_3R = jnp.repeat(pre.last_positions, G, axis=1)

    state_R = constraint.init_state(R) if constraint is not None else jnp.zeros((R,), jnp.int32)
    tok_R, lp_R, state_R = draw(0, logits_RV, state_R)
    done_R = jnp.isin(tok_R, stops)
    tokens_RN = jnp.full((R, N), sampling.pad_token_id, jnp.int32).at[:, 0].set(tok_R)
    logprobs_RN = jnp.zeros((R, N), jnp.float32).at[:, 0].set(lp_R)
    lengths_R = jnp.where(done_R, 1, N).astype(jnp.int32)

    def cond(carry):
        k, _, _, _, done_R, _, _, _ = carry
        return (k < N) & ~jnp.all(done_R)

    def body(carry):
        # Feed token k-1 (slot S+k-1, position last+k) and draw token k. Finished rows keep computing on
        # their last real token (pad may lie outside a small vocab) but record pad / logprob 0.
        k, prev_R, tokens_RN, logprobs_RN, done_R, lengths_R, cache, state_R = carry
        logits, cache = model.decode_step(prev_R[:, None], (last_3R + k)[..., None], cache, S + k - 1)
        tok_R, lp_R, state_R = draw(k, logits[:, -1], state_R)
        out_R = jnp.where(done_R, sampling.pad_token_id, tok_R)
        tokens_RN = jax.lax.dynamic_update_slice(tokens_RN, out_R[:, None], (0, k))
        logprobs_RN = jax.lax.dynamic_update_slice(logprobs_RN, jnp.where(done_R, 0.0, lp_R)[:, None], (0, k))
        stop_R = ~done_R & jnp.isin(tok_R, stops)
        lengths_R = jnp.where(stop_R, k + 1, lengths_R)
        prev_R = jnp.where(done_R, prev_R, tok_R)
        return k + 1, prev_R, tokens_RN, logprobs_RN, done_R | stop_R, lengths_R, cache, state_R

    carry = (jnp.int32(1), tok_R, tokens_RN, logprobs_RN, done_R, lengths_R, cache, state_R)
    _, _, tokens_RN, logprobs_RN, done_R, lengths_R, _, _ = jax.lax.while_loop(cond, body, carry)
    return GenerationResult(tokens=tokens_RN.reshape(B, G, N), logprobs=logprobs_RN.reshape(B, G, N),
                            lengths=lengths_R.reshape(B, G), finished=done_R.reshape(B, G))


# Parameters travel as jit arguments (weights are never baked into a program). Two programs: the prefill's
# shapes depend on the media, the decode loop's on (B, S, G, N) and the SamplingConfig only. Plain jax.jit with
# the graph definition bound (`Decoder`) rather than nnx.jit: the model is split once for both programs and
# nothing is written back into it (nnx.jit would split and update the whole module graph around each call).

def _merged(graphdef, weights: tuple, copy: bool = False):
    if not isinstance(weights, tuple):  # a bare State would be iterated key by key
        raise TypeError(f"a Decoder takes its weights as a tuple of States / FlatStates, got {type(weights).__name__}")
    return nnx.merge(graphdef, *(unflat(w) for w in weights), copy=copy)


def _prefill_jit(graphdef, weights, inputs):
    return _prefill(_merged(graphdef, weights), inputs)


def _decode_jit(graphdef, weights, pre, rng, *, sampling, constraint, rows=None):
    with L.weights_as_stored():  # one token per step: under FSDP move activations, not whole weights, per token
        # copy=True: new Variables, so the fold below never writes into the caller's (also under disable_jit)
        return _decode(_merged(graphdef, weights, copy=True), pre, rng, sampling, constraint, rows)


_KERNEL_FAILED: list[str] = []  # set once the shared-prefix kernel failed to compile: auto means off from then on


class Decoder:
    """The prefill and decode programs of one model structure, its graph definition bound into them.

    Why: a graph definition passed as a static jit argument is hashed on every call, and a model is split on every
    call of `generate(model, ...)`. For a 36-layer thinker on the 2-core development CPU (session 22) that was
    ~11 ms to hash, ~30 ms of host time per program call and ~0.1 s to split: time in which a GPU waits between
    the programs of a GRPO step (a 3B step's profile on an H100 showed 0.1 s idle before each prefill). A caller
    that decodes again and again builds one `Decoder` and passes the weights each call as a tuple of
    `nnx.State`s (merged inside the program), those that stay the same as `models.flat_state.FlatState`s (a
    GRPO rollout: the policy's LoRA factors as a State, its frozen base flattened once)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef
        self._prefill = jax.jit(functools.partial(_prefill_jit, graphdef))
        self._decode = jax.jit(functools.partial(_decode_jit, graphdef), static_argnames=("sampling",))

    def prefill(self, weights: tuple, inputs: dict[str, Any]) -> Prefill:
        """Runs the towers and the B prompts once; `decode` samples from the result."""
        _check_left_padded(inputs["attention_mask"])
        return self._prefill(weights, inputs)

    def decode(self, weights: tuple, pre: Prefill, sampling: SamplingConfig, rng: jax.Array, constraint=None,
               rows: RowSampling | None = None) -> GenerationResult:
        """Samples `sampling.num_samples` continuations of each prefilled prompt (one jitted while loop). The
        caller checks a `constraint` against the model (`check_constraint`). With `shared_prefix="auto"`, a
        kernel that fails to compile on this card or shape (it is measured on an H100 at the shapes
        `SamplingConfig.shared_prefix_kernel` admits by default) is reported once and the loop decodes with a
        cache copy per sample instead; "on" raises."""
        _check_rows(sampling, rows, pre.logits.shape[0])
        if sampling.shared_prefix == "auto" and _KERNEL_FAILED:
            sampling = dataclasses.replace(sampling, shared_prefix="off")
        try:
            return self._decode(weights, pre, rng, sampling=sampling, constraint=constraint, rows=rows)
        except Exception as e:  # noqa: BLE001 - a lowering/compile error of the optional kernel: fall back, say why
            if sampling.shared_prefix != "auto" or sampling.num_samples == 1:
                raise
            _KERNEL_FAILED.append(repr(e)[:500])
            log.warning("the shared-prefix decode kernel failed (%s); decoding with a cache copy per sample "
                        "instead", _KERNEL_FAILED[-1])
            return self._decode(weights, pre, rng, sampling=dataclasses.replace(sampling, shared_prefix="off"),
                                constraint=constraint, rows=rows)

    def generate(self, weights: tuple, inputs: dict[str, Any], sampling: SamplingConfig, rng: jax.Array,
                 constraint=None, rows: RowSampling | None = None) -> GenerationResult:
        """`generate` with this decoder's programs and `weights`."""
        _check_rows(sampling, rows, inputs["attention_mask"].shape[0])
        return self.decode(weights, self.prefill(weights, inputs), sampling, rng, constraint, rows)


@functools.lru_cache(maxsize=16)
def _decoder_of(graphdef) -> Decoder:
    """One `Decoder` per model structure for the model-taking functions below (equal graph definitions share one;
    looking it up hashes the graph definition once per call)."""
    return Decoder(graphdef)


def _split(model) -> tuple[Decoder, tuple]:
    graphdef, state = nnx.split(model)
    return _decoder_of(graphdef), (state,)


def prefill(model, inputs: dict[str, Any]) -> Prefill:
    """Runs the towers and the B prompts once (jitted); `decode` samples from the result."""
    decoder, weights = _split(model)
    return decoder.prefill(weights, inputs)


def decode(model, pre: Prefill, sampling: SamplingConfig, rng: jax.Array, constraint=None,
           rows: RowSampling | None = None) -> GenerationResult:
    """Samples `sampling.num_samples` continuations of each prefilled prompt (one jitted while loop)."""
    if constraint is not None:
        check_constraint(model.config.text.vocab_size, sampling, constraint)
    decoder, weights = _split(model)
    return decoder.decode(weights, pre, sampling, rng, constraint, rows)


def _check_left_padded(mask) -> None:
    if isinstance(mask, jax.core.Tracer):
        return
    # Several processes: each checks the rows it holds (every row is held by one), no gather needed.
    multi = isinstance(mask, jax.Array) and not mask.is_fully_addressable
    for part in [s.data for s in mask.addressable_shards] if multi else [mask]:
        m = np.asarray(part).astype(bool)
        if (m.any(1) & ~m[:, -1]).any():  # all-padding rows (a final partial batch) are allowed
            raise ValueError("generate needs left-padded prompts: every row's last attention_mask entry must be 1")
        if (np.diff(m.astype(np.int8), axis=1) < 0).any():
            raise ValueError("generate needs left-padded prompts: a row's attention_mask has a gap (0 after 1)")


def _check_rows(sampling: SamplingConfig, rows, batch: int) -> None:
    if sampling.per_row and not sampling.greedy:
        if rows is None:
            raise ValueError("SamplingConfig(per_row=True) needs rows=RowSampling(...) (each prompt's temperature "
                             "and top_p)")
        if rows.temperature.shape != (batch,):
            raise ValueError(f"RowSampling holds {rows.temperature.shape} values for {batch} prompts")
    elif rows is not None:
        raise ValueError("rows=RowSampling(...) is only read by a SamplingConfig(per_row=True) that samples")


def check_constraint(vocab_size: int, sampling: SamplingConfig, constraint) -> None:
    """Raises unless `constraint` can end within `sampling` and covers a `vocab_size`-token model."""
    if constraint.stop_id not in sampling.stop_token_ids:
        raise ValueError(f"the constraint ends on token {constraint.stop_id}, which is not among "
                         f"sampling.stop_token_ids {sampling.stop_token_ids}")
    if sampling.max_new_tokens < constraint.min_new_tokens:
        raise ValueError(f"max_new_tokens {sampling.max_new_tokens} is below the shortest constrained output "
                         f"({constraint.min_new_tokens} tokens)")
    if constraint.vocab_size != vocab_size:
        raise ValueError(f"constraint tables cover {constraint.vocab_size} ids, the model's vocab is {vocab_size}")


def generate(model, inputs: dict[str, Any], sampling: SamplingConfig, rng: jax.Array,
             constraint=None, rows: RowSampling | None = None) -> GenerationResult:
    """Samples `sampling.num_samples` continuations of each prompt.

    Args:
      model: a `Thinker` (anything with `config`, `forward(..., cache=, cache_index=, return_hidden=)`,
        `logits` and `decode_step`).
      inputs: `prepare_inputs` output for a left-padded batch of B prompts of length S.
      sampling: the decoding settings (static).
      rng: a PRNG key; the same key and shapes reproduce the same samples.
      constraint: optional `constrained.TokenConstraint` (a jit argument, not static): each row's logits are
        masked to its automaton state before the warpers, so every row writes a schema-valid judgement and
        ends with `constraint.stop_id` within max_new_tokens; logprobs are under that masked distribution.
      rows: with `sampling.per_row`, each prompt's temperature and top_p (`RowSampling`, traced: any values run
        the same compiled program).
    Returns:
      a `GenerationResult` with (B, G, N) tokens/logprobs and (B, G) lengths/finished.
    """
    if constraint is not None:
        check_constraint(model.config.text.vocab_size, sampling, constraint)  # before the (expensive) prefill
    decoder, weights = _split(model)
    return decoder.generate(weights, inputs, sampling, rng, constraint, rows)
