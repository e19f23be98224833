"""Schema-constrained decoding: a token automaton that only lets the thinker write a valid, consistent judgement.

Why: GRPO and evaluation both need every rollout to parse — an untrained or drifting policy otherwise spends
its samples on broken JSON, and `better` / `final_verdict` that contradict the scores. With the constraint,
any sampled output is exactly

    {"score_A": <0-10>, "score_B": <0-10>, "better": "<A|B|equal>", "reasoning": "<think>…</think>",
     "final_verdict": "<answer>[[<better>]]</answer>"}

(one line, `json.dumps` separators, as `schema.format_judgement` writes the SFT targets), followed by the stop
token. The model chooses only the two scores and the free text; `better` is forced from the scores (the rule
of `parse_judgement` and MMContentORM) and `final_verdict` from `better`.

How, in three layers:

1. `judgement_dfa`: a deterministic automaton over UTF-8 *bytes* (all structure is ASCII). It remembers
   score_A (11 copies of the score_B chain) and then only the verdict (3 copies of the rest). Free text is a
   JSON string body: no raw `"` or control bytes, valid escapes only (`\\uXXXX`, surrogates only in pairs); it
   tracks how much of `</think>` it has just read, and the closing `"` is allowed only right after it.
   Working on bytes makes byte-fallback and byte-level BPE tokens exact: a partial UTF-8 sequence only ever
   contributes non-ASCII characters (or U+FFFD) to the decoded text, which free text accepts and structure
   never does, so the decoded string is in the language whenever the bytes are.
2. `build_constraint`: the byte automaton lifted to the vocabulary — for every state and token, the state
   after the token's bytes (dead if any byte is refused), computed on the host with numpy, once. Tokens with
   identical columns (e.g. every plain word, which in free text just resets the `</think>` match) share one
   *class*, so the tables are (states × classes), not (states × vocab): a 152k vocabulary needs one int32 per
   token plus ~600 states × a few hundred classes (213 for a synthetic 152k byte-level BPE, built in ~2 s).
3. `TokenConstraint`, a pytree the jitted sampler carries: per step it masks the logits to the tokens allowed
   in each row's state *whose successor can still reach the end within the remaining token budget* (`cost` =
   fewest tokens to finish, stop token included). That budget rule is the rationale length cap: free text
   runs until the budget forces the shortest close, so every row ends with the stop token within
   max_new_tokens. Masking happens before temperature/top-k/top-p, so the logprobs the sampler returns are
   under the constrained distribution (forced tokens get log-prob 0).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from omnirrm_jax.decoding import sampler
from omnirrm_jax.rubric import schema

_THINK_CLOSE = b"</think>"
_INF = 1 << 30  # cost of a state that cannot finish


# ----------------------------------------------------------------------------------------------------
# 1. Byte-level automaton of the judgement language
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ByteDFA:
    """delta (S, 256) int32: next state per byte, -1 = refused. The language is the byte strings from
    `start` to `accept`; `accept` has no outgoing bytes (only the stop token follows)."""

    delta: np.ndarray
    start: int
    accept: int

    def run(self, data: bytes, state: int | None = None) -> int:
        """State after `data` (-1 once refused); a host-side oracle for tests."""
        s = self.start if state is None else state
        for b in data:
            if s < 0:
                break
            s = int(self.delta[s, b])
        return s


class _Builder:
    def __init__(self):
        self.rows: list[np.ndarray] = []

    def new(self) -> int:
        self.rows.append(np.full(256, -1, np.int32))
        return len(self.rows) - 1

    def edge(self, s: int, chars: bytes | Sequence[int], t: int) -> None:
        self.rows[s][list(chars)] = t

    def literal(self, s: int, text: str, end: int | None = None) -> int:
        """A chain spelling `text` from s; the last byte goes to `end` (a fresh state when None)."""
        data = text.encode()
        for i, b in enumerate(data):
            t = end if (end is not None and i == len(data) - 1) else self.new()
            self.rows[s][b] = t
            s = t
        return s

    def score(self, s: int) -> list[int]:
        """States after an integer 0-10 (no leading zeros); index = value. "1" may still become "10"."""
        out = [self.new() for _ in range(11)]
        for d in range(10):
            self.edge(s, str(d).encode(), out[d])
        self.edge(out[1], b"0", out[10])
        return out


def _verdict(a: int, b: int) -> str:
    return "A" if a > b else "B" if b > a else "equal"


def judgement_dfa() -> ByteDFA:
    """The byte automaton of a consistent judgement in `format_judgement`'s layout (see the module doc)."""
    k = schema.KEYS
    g = _Builder()
    start, accept = g.new(), g.new()
    score_a = g.score(g.literal(start, '{"%s": ' % k[0]))
    after_comma = {v: g.new() for v in schema.VERDICTS}  # after score_B's ",": only the verdict is remembered
    for a in range(11):
        score_b = g.score(g.literal(score_a[a], ', "%s": ' % k[1]))
        for b in range(11):
            g.edge(score_b[b], b",", after_comma[_verdict(a, b)])
    hexd = b"0123456789abcdefABCDEF"
    plain = [c for c in range(0x20, 256) if c not in b'"\\']  # JSON forbids raw control bytes and bare "/\
    for v in schema.VERDICTS:
        body = g.literal(after_comma[v], ' "%s": "%s", "%s": "<think>' % (k[2], v, k[3]))
        # free[q]: inside the string, the last q bytes read are the first q of </think> (KMP; '<' never recurs)
        free = [body] + [g.new() for _ in _THINK_CLOSE]
        # uK: after "\u" and K-1 hex digits (u2d: the first was d); hiK / loK: the same inside a surrogate pair
        esc, u1, u2, u2d, u3, u4, hi3, hi4, lo0, lo1, lo2, lo3 = (g.new() for _ in range(12))
        for q, s in enumerate(free):
            g.edge(s, plain, free[0])
            g.edge(s, b"<", free[1])
            if q < len(_THINK_CLOSE):
                g.edge(s, _THINK_CLOSE[q:q + 1], free[q + 1])
            g.edge(s, b"\\", esc)
        g.edge(esc, b'"\\/bfnrt', free[0])  # an escape never extends a </think> match: closing needs it raw
        g.edge(esc, b"u", u1)
        g.edge(u1, hexd.replace(b"d", b"").replace(b"D", b""), u2)
        g.edge(u1, b"dD", u2d)
        g.edge(u2d, b"01234567", u3)
        # \uD800-\uDBFF only as the first half of a surrogate pair (json.dumps' ensure_ascii form of
        # emoji); lone halves are refused (Python would load them, but they cannot be encoded to UTF-8)
        g.edge(u2d, b"89abAB", hi3)
        g.edge(hi3, hexd, hi4)
        g.edge(hi4, hexd, lo0)
        g.edge(lo0, b"\\", lo1)
        g.edge(lo1, b"u", lo2)
        g.edge(lo2, b"dD", lo3)
        g.edge(lo3, b"cdefCDEF", u3)
        g.edge(u2, hexd, u3)
        g.edge(u3, hexd, u4)
        g.edge(u4, hexd, free[0])
        g.literal(free[-1], '", "%s": "%s"}' % (k[4], schema.verdict_tag(v)), end=accept)
    return ByteDFA(np.stack(g.rows), start, accept)


# ----------------------------------------------------------------------------------------------------
# Tokenizer -> bytes each token adds to the decoded text
# ----------------------------------------------------------------------------------------------------

def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode, the alphabet of byte-level BPE vocabularies (Qwen's)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok) -> list[bytes | None]:
    """What each id contributes to `tok.decode` of a sequence; None = never allowed (special/added/unknown).

    SentencePiece: pieces with '▁' as space, byte pieces as their byte. HF byte-level BPE: the token string
    through the GPT-2 byte map (partial UTF-8 kept as bytes). Anything else: `decode([id])`, refusing ids
    that do not decode to a clean string. Assumes decode(ids) is the concatenation (true for both
    tokenizers of `data.tokenizer`; HF's clean_up_tokenization_spaces only drops spaces, inside free text).
    """
    specials = set(tok.special_ids.values())
    sp = getattr(tok, "sp", None)
    if sp is not None:
        out = []
        for i in range(tok.vocab_size):
            piece = sp.id_to_piece(i)
            if i in specials or sp.is_control(i) or sp.is_unknown(i):
                out.append(None)
            elif sp.is_byte(i):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode())
        return out
    hf = getattr(tok, "hf", None)
    if hf is not None:
        added = set(int(i) for i in getattr(hf, "added_tokens_decoder", {})) | specials
        strs = hf.convert_ids_to_tokens(list(range(tok.vocab_size)))
        dec = _gpt2_byte_decoder()
        if all(s is None or i in added or all(c in dec for c in s) for i, s in enumerate(strs)):
            return [None if (s is None or i in added) else bytes(dec[c] for c in s) for i, s in enumerate(strs)]
    out = []
    for i in range(tok.vocab_size):
        text = None if i in specials else tok.decode([i])
        out.append(None if text is None or "\ufffd" in text else text.encode())
    return out


# ----------------------------------------------------------------------------------------------------
# 2./3. Token tables and the device-side constraint
# ----------------------------------------------------------------------------------------------------

@struct.dataclass
class TokenConstraint:
    """Token automaton tables (a jit argument; same shapes -> same compiled program).

    token_class (V,): column of each id in the tables. allowed (S, C): the class may follow the state.
    next_state (S, C): the state after it (0 where not allowed). cost (S,): fewest tokens from the state to
    the end, the stop token included (`_INF` if it cannot finish). State `accept` allows only the stop token,
    which leads to `done` (where stop repeats, so finished rows always have a legal token).
    """

    token_class: jax.Array
    allowed: jax.Array
    next_state: jax.Array
    cost: jax.Array
    start: int = struct.field(pytree_node=False)
    accept: int = struct.field(pytree_node=False)
    done: int = struct.field(pytree_node=False)
    stop_id: int = struct.field(pytree_node=False)
    min_new_tokens: int = struct.field(pytree_node=False)  # cost[start]: the smallest max_new_tokens

    @property
    def vocab_size(self) -> int:
        return int(self.token_class.shape[0])

    # -- device side (inside the decode loop) ----------------------------------------------------------
    def init_state(self, rows: int) -> jax.Array:
        return jnp.full((rows,), self.start, jnp.int32)

    def token_mask(self, state_R: jax.Array, budget: jax.Array | int) -> jax.Array:
        """(R, V) bool: tokens legal in each row's state that leave `cost <= budget` (tokens left after it)."""
        ok_RC = self.allowed[state_R] & (self.cost[self.next_state[state_R]] <= budget)
        return jnp.take(ok_RC, self.token_class, axis=1)

    def mask_logits(self, logits_RV: jax.Array, state_R: jax.Array, budget: jax.Array | int) -> jax.Array:
        return jnp.where(self.token_mask(state_R, budget), logits_RV.astype(jnp.float32), -jnp.inf)

    def advance(self, state_R: jax.Array, tok_R: jax.Array) -> jax.Array:
        return self.next_state[state_R, self.token_class[tok_R]]

    # -- host side (tests, debugging) ------------------------------------------------------------------
    def allowed_ids(self, state: int, budget: int | None = None) -> np.ndarray:
        """Ids legal in `state` (with a budget: that can still finish within it)."""
        b = _INF if budget is None else budget
        return np.flatnonzero(np.asarray(self.token_mask(jnp.asarray([state], jnp.int32), b))[0])

    def state_after(self, ids: Sequence[int], state: int | None = None) -> int:
        """State after feeding `ids` (-1 as soon as one is not allowed)."""
        cls, allowed, nxt = (np.asarray(a) for a in (self.token_class, self.allowed, self.next_state))
        s = self.start if state is None else state
        for i in ids:
            c = cls[int(i)]
            if not allowed[s, c]:
                return -1
            s = int(nxt[s, c])
        return s


def _lift(delta: np.ndarray, toks: list[bytes | None], chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Token columns of the lifted automaton: (class of each token, (S, C) next states with -1 = dead).

    Every token runs through the byte automaton from all S states at once, in chunks of tokens: the first
    byte densely, then only the (state, token) pairs still alive (structural states refuse almost every
    first byte, so few survive outside free text). Identical columns are merged into one class (random
    64-bit hashes group them; members are then checked equal to their representative, so merging is exact).
    """
    S = delta.shape[0]
    dsink = np.concatenate([np.where(delta < 0, S, delta), np.full((1, 256), S, delta.dtype)])
    weights = np.random.default_rng(0).integers(-(2**62), 2**62, size=S, dtype=np.int64)
    cls = np.zeros(len(toks), np.int64)
    columns: dict[bytes, int] = {np.full(S, -1, np.int32).tobytes(): 0}  # class 0: never allowed
    live = [i for i, t in enumerate(toks) if t]
    for lo in range(0, len(live), chunk):
        ids = live[lo:lo + chunk]
        lens = np.array([len(toks[i]) for i in ids])
        mat = np.zeros((len(ids), lens.max()), np.int64)
        for r, i in enumerate(ids):
            mat[r, : lens[r]] = np.frombuffer(toks[i], np.uint8)
        out = dsink[:S, mat[:, 0]]  # (S, n) after the first byte
        s_i, t_i = np.nonzero((out < S) & (lens > 1))
        st = out[s_i, t_i]
        for j in range(1, lens.max()):
            st = dsink[st, mat[t_i, j]]
            end = lens[t_i] == j + 1
            out[s_i[end], t_i[end]] = st[end]
            keep = ~end & (st < S)
            out[s_i[~end & (st == S)], t_i[~end & (st == S)]] = S
            s_i, t_i, st = s_i[keep], t_i[keep], st[keep]
        colsT = np.ascontiguousarray(np.where(out == S, -1, out).T.astype(np.int32))  # (n, S)
        with np.errstate(over="ignore"):
            _, rep, inv = np.unique(colsT.astype(np.int64) @ weights, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if not (colsT == colsT[rep[inv]]).all():
            raise RuntimeError("token column hash collision")  # practically impossible; refuse to guess
        ucls = np.array([columns.setdefault(colsT[r].tobytes(), len(columns)) for r in rep])
        cls[ids] = ucls[inv]
    table = np.stack([np.frombuffer(k, np.int32) for k in columns], 1)  # (S, C)
    return cls, table


def build_constraint(toks: Sequence[bytes | str | None], stop_id: int, vocab_size: int | None = None,
                     dfa: ByteDFA | None = None) -> TokenConstraint:
    """Tables for a vocabulary given as the bytes each id decodes to (None = never allowed).

    Args:
      toks: per id, its bytes (str is UTF-8 encoded); see `token_bytes`.
      stop_id: the token that must follow the closing brace (`<|im_end|>`); allowed nowhere else.
      vocab_size: the model's logits width (>= len(toks); the extra ids are never allowed).
      dfa: the byte automaton (default `judgement_dfa()`).
    Raises:
      ValueError if the vocabulary cannot spell the schema.
    """
    dfa = dfa or judgement_dfa()
    V = len(toks) if vocab_size is None else int(vocab_size)
    if V < len(toks) or not 0 <= stop_id < V:
        raise ValueError(f"vocab_size {V} is smaller than the tokenizer ({len(toks)}) or stop id {stop_id} outside")
    toks = [t.encode() if isinstance(t, str) else t for t in toks] + [None] * (V - len(toks))
    toks[stop_id] = None
    cls, table = _lift(dfa.delta, toks)
    S, C = table.shape
    done = S
    stop_col = np.full((S + 1, 1), -1, np.int32)
    stop_col[[dfa.accept, done], 0] = done
    table = np.concatenate([np.concatenate([table, np.full((1, C), -1, np.int32)]), stop_col], 1)
    cls[stop_id] = C
    # cost: fewest tokens to `done` (Bellman-Ford; at most S+1 rounds); states that cannot finish are cut off
    cost = np.full(S + 1, _INF, np.int64)
    cost[done] = 0
    for _ in range(S + 1):
        via = np.where(table >= 0, cost[np.maximum(table, 0)] + 1, _INF).min(1)
        new = np.minimum(cost, via)
        new[done] = 0
        if np.array_equal(new, cost):
            break
        cost = new
    if cost[dfa.start] >= _INF:
        raise ValueError("this vocabulary cannot spell a judgement (some required byte has no token)")
    allowed = (table >= 0) & (cost[np.maximum(table, 0)] < _INF)
    return TokenConstraint(
        token_class=jnp.asarray(cls, jnp.int32), allowed=jnp.asarray(allowed),
        next_state=jnp.asarray(np.where(allowed, table, 0), jnp.int32),
        cost=jnp.asarray(np.minimum(cost, _INF), jnp.int32), start=dfa.start, accept=dfa.accept, done=done,
        stop_id=int(stop_id), min_new_tokens=int(cost[dfa.start]))


_CACHE: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def judgement_constraint(tok, vocab_size: int | None = None) -> TokenConstraint:
    """The constraint for `tok`, built on first use and cached on the tokenizer object (stop = <|im_end|>).

    vocab_size: the model's logits width (e.g. `cfg.text.vocab_size`, larger than Qwen's tokenizer).
    """
    per_tok = _CACHE.setdefault(tok, {})
    key = int(vocab_size or tok.vocab_size)
    if key not in per_tok:
        per_tok[key] = build_constraint(token_bytes(tok), tok.special_ids["im_end"], key)
    return per_tok[key]


def decode_outputs(tok, result) -> list[list[str]]:
    """Text of each (prompt, sample) of a `GenerationResult`, without the stop token and padding."""
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    finished = np.asarray(result.finished)
    return [[tok.decode(tokens[b, g, : lengths[b, g] - int(finished[b, g])]) for g in range(tokens.shape[1])]
            for b in range(tokens.shape[0])]


def generate_judgements(model, tok, inputs, sampling, rng):
    """Constrained `sampler.generate` for the demo / eval: (GenerationResult, texts[B][G]).

    `sampling.stop_token_ids` must contain `tok`'s <|im_end|>; max_new_tokens must be at least
    `judgement_constraint(tok, ...).min_new_tokens` (the shortest judgement in tokens).
    """
    constraint = judgement_constraint(tok, model.config.text.vocab_size)
    result = sampler.generate(model, inputs, sampling, rng, constraint=constraint)
    return result, decode_outputs(tok, result)
