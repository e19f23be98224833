"""Schema-constrained decoding: the byte automaton, its lifting to token tables (toy, SentencePiece and
byte-level BPE vocabularies, checked against a brute-force oracle), the per-tokenizer cache, and 1,000
constrained samples of an untrained tiny thinker that all parse, are consistent and score format 1.0."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from tests.compile_count import count_compiles
from omnirrm_jax.data.tokenizer import SPECIAL_TOKENS, build_prompt_ids, thinker_token_ids, train_sentencepiece
from omnirrm_jax.decoding import constrained as C
from omnirrm_jax.decoding import sampler as SM
from omnirrm_jax.models import config as config_lib
from omnirrm_jax.models import thinker as thinker_lib
from omnirrm_jax.rubric import format_judgement, format_reward, parse_judgement

REASONS = ["Fluency: A is coherent, B rambles. Accuracy: both correct; reasoning of A is better.",
           'Relevance: B quotes "the question" \\ and A misses it.\nSafety: both safe. ☃ 中文 — ok 😀',
           "<think>Accuracy</think> repeated </think> tags and <thin k> fakes </thinking>."]
ARBITRARY = ["The quick brown fox jumps over the lazy dog 12345!? {json: [1, 2]} tab\there",
             "Ünïcode ☃ and emoji 😀 and C:\\path\\file with \"quotes\" <b>html</b> 3.14159"]




def _verdict(a, b):
    return "A" if a > b else "B" if b > a else "equal"


def corpus():
    return [format_judgement(a, b, _verdict(a, b), REASONS[(a + b) % 3]) for a in range(11) for b in range(11)] \
        + ARBITRARY * 5


def _oracle_check(c, toks, dfa, ids):
    """Tables == running each token's bytes through the byte DFA (dead or unable to finish -> refused)."""
    cls, allowed, nxt, cost = (np.asarray(a) for a in (c.token_class, c.allowed, c.next_state, c.cost))
    assert np.flatnonzero(allowed[:, cls[c.stop_id]]).tolist() == sorted([c.accept, c.done])
    for t in set(ids) - {c.stop_id}:
        for s in range(dfa.delta.shape[0]):
            want = dfa.run(toks[t], s) if toks[t] else -1
            if want >= 0 and cost[want] >= C._INF:
                want = -1
            got = int(nxt[s, cls[t]]) if allowed[s, cls[t]] else -1
            assert got == want, (s, t, toks[t], got, want)


def _random_walk(c, rng, n):
    """Uniform choice among the allowed ids under the same budget rule the sampler uses."""
    s, ids = c.start, []
    for k in range(n):
        t = int(rng.choice(c.allowed_ids(s, n - k - 1)))
        ids.append(t)
        s = c.state_after([t], s)
        if t == c.stop_id:
            return ids
    raise AssertionError("the walk did not stop within the budget")


# ----------------------------------------------------------------------------------------------------
# Byte automaton
# ----------------------------------------------------------------------------------------------------

def test_dfa_accepts_exactly_consistent_judgements():
    dfa = C.judgement_dfa()
    for a in range(11):
        for b in range(11):
            text = format_judgement(a, b, _verdict(a, b), REASONS[(a * b) % 3])
            assert dfa.run(text.encode()) == dfa.accept, text
            wrong = {"A", "B", "equal"} - {_verdict(a, b)}
            for v in wrong:  # inconsistent better, or a final_verdict that disagrees
                assert dfa.run(format_judgement(a, b, v, "x").encode()) != dfa.accept
                bad = text.replace(f"[[{_verdict(a, b)}]]", f"[[{v}]]")
                assert dfa.run(bad.encode()) != dfa.accept
    good = format_judgement(7, 3, "A", "fine")
    for bad in [good.replace(", ", ","), good.replace("7", "07"), good.replace("7", "11"), good.replace("7", "7.0"),
                good.replace("fine", "fi\nne"), good.replace("fine", 'fi"ne'), good.replace("fine", "fi\\xne"),
                good.replace("fine", "fi\\ud800ne"), good.replace("fine", "\\udc00"), good.replace("fine", "\\ud83dx"),
                good.replace("fine", "\\ud83d\\u0041"), good.replace("fine</think>", "fine"),
                good.replace("fine</think>", "fine<\\/think>"), good + " ", good[:-1]]:
        assert dfa.run(bad.encode()) != dfa.accept, bad
    for ok in ["fi\\ne \\u00e9 \\\\ \\/ \\\"", "\\ud7ff \\ud83d\\ude00", "", "</think></think", "☃ 😀"]:
        assert dfa.run(good.replace("fine", ok).encode()) == dfa.accept, ok
        assert parse_judgement(good.replace("fine", ok)).ok
    for text in corpus()[:121]:  # json.dumps' ASCII-only form (\\uXXXX escapes, emoji as surrogate pairs) too
        ascii_form = json.dumps(json.loads(text))
        assert "\\ud83d\\ude00" in ascii_form or "\\u" not in ascii_form
        assert dfa.run(ascii_form.encode()) == dfa.accept


# ----------------------------------------------------------------------------------------------------
# Token tables on a hand-made vocabulary
# ----------------------------------------------------------------------------------------------------

TOY = ['{"score_A": ', "{", '"', "score_A", '": ', "1", "10", "0", "7", "3", "0,", ", ", '"score_B": ', ', "score_B": ',
       ' "better": "', "A", "B", "equal", '", ', '"reasoning": "<think>', "hi", " there", "\\", '\\"', "\\u00e9",
       "\\ud800", "\n", "<", "</", "think", "think>", ">", '>"', "</think>", '</think>", ', '"final_verdict": ',
       '"<answer>[[', "]]</answer>", '"}', ", \"better\": \"A", ", \"better\": \"B", "☃", b"\xe2\x98", b"\x83", None,
       '"better": "', '", "reasoning": "<think>', '", "final_verdict": "<answer>[[', "A]]</answer>\"}",
       "B]]</answer>\"}", "equal]]</answer>\"}"]
STOP = len(TOY)  # the stop token (e.g. <|im_end|>) is one more id


@pytest.fixture(scope="module")
def toy():
    return C.build_constraint(TOY, STOP, vocab_size=len(TOY) + 3)  # +3: model vocab wider than the tokenizer


def _ids(*pieces):
    return [TOY.index(p) for p in pieces]


def test_toy_tables_match_oracle(toy):
    toks = [t.encode() if isinstance(t, str) else t for t in TOY] + [None] * 4
    _oracle_check(toy, toks, C.judgement_dfa(), range(len(TOY)))
    assert np.asarray(toy.token_class).shape == (len(TOY) + 3,)
    assert toy.allowed.shape[1] < len(TOY)  # equivalent tokens share a column


def test_toy_structure_scores_and_consistency(toy):
    ok = set(toy.allowed_ids(toy.start).tolist())
    assert ok == set(_ids('{"score_A": ', "{")), "only the opening may start"
    s = toy.state_after(_ids('{"score_A": '))
    # "0," spells a legal prefix, but no toy token continues with ' "score_B"': pruned (cannot finish)
    assert set(toy.allowed_ids(s).tolist()) == set(_ids("1", "10", "0", "7", "3"))
    one = toy.state_after(_ids("1"), s)
    assert set(toy.allowed_ids(one).tolist()) == set(_ids("0", ", ", ', "score_B": '))
    assert toy.state_after(_ids("10", "0"), s) == -1 and toy.state_after(_ids("7", "1"), s) == -1
    # score_A 7 then score_B 3: better must be A; the spanning ', "better": "B' is refused, the A one allowed
    sb = toy.state_after(_ids("7", ', "score_B": ', "3"), s)
    assert toy.state_after(_ids(', "better": "B'), sb) == -1
    assert toy.state_after(_ids(', "better": "A'), sb) >= 0
    assert toy.state_after(_ids(", ", '"better": "', "equal"), sb) == -1
    # the same token sequence with score_B 10: B, and the final verdict must repeat it
    sb10 = toy.state_after(_ids("7", ", ", '"score_B": ', "10"), s)
    free = toy.state_after(_ids(', "better": "B', '", "reasoning": "<think>'), sb10)
    assert free >= 0
    close = toy.state_after(_ids("hi", '</think>", ', '"final_verdict": ', '"<answer>[['), free)
    assert toy.state_after(_ids("A]]</answer>\"}"), close) == -1
    end = toy.state_after(_ids("B]]</answer>\"}"), close)
    assert end == toy.accept and toy.allowed_ids(end).tolist() == [STOP]


def test_toy_free_text_quotes_escapes_and_bytes(toy):
    free = toy.state_after(_ids('{"score_A": ', "1", ', "score_B": ', "1", ", ", '"better": "', "equal",
                                '", "reasoning": "<think>'))
    ok = set(toy.allowed_ids(free).tolist())
    for p in ["hi", " there", "\\", '\\"', "\\u00e9", "<", "</", "think", "</think>", '</think>", ', "☃",
              b"\xe2\x98", b"\x83", "A", "0,", "]]</answer>"]:
        assert TOY.index(p) in ok, p
    for p in ['"', '>"', '"}', "\n", "\\ud800", None, ', "score_B": ']:  # raw quote, control byte, surrogate, special
        assert TOY.index(p) not in ok, p
    assert STOP not in ok
    esc = toy.state_after(_ids("\\"), free)  # after a backslash: one escaped char, then plain text again
    assert TOY.index('"') in toy.allowed_ids(esc) and TOY.index("hi") not in toy.allowed_ids(esc)
    assert TOY.index('"') not in toy.allowed_ids(toy.state_after(_ids("\\", '"'), free))
    almost = toy.state_after(_ids("</", "think"), free)  # `>"` spans the end of </think> and the closing quote
    assert TOY.index('>"') in toy.allowed_ids(almost)
    assert toy.state_after(_ids("</", "think>", '"'), free) >= 0
    assert toy.state_after(_ids("</", "think", "hi", '>"'), free) == -1
    assert toy.state_after(_ids("\\", "</think>", '"'), free) == -1  # "\<" is no JSON escape


def test_toy_budget_forces_the_shortest_close(toy):
    free = toy.state_after(_ids('{"score_A": ', "3", ', "score_B": ', "7", ', "better": "B',
                                '", "reasoning": "<think>'))
    cost = int(np.asarray(toy.cost)[free])
    assert cost == 4  # </think> | ", "final_verdict": "<answer>[[ | B]]</answer>"} | stop
    tight = toy.allowed_ids(free, budget=cost - 1)  # what follows must leave a 3-token finish
    assert tight.tolist() == _ids("</think>")
    assert TOY.index("hi") in toy.allowed_ids(free, budget=cost)
    c = toy
    assert c.min_new_tokens == int(np.asarray(c.cost)[c.start])
    rng = np.random.default_rng(0)
    for n in (c.min_new_tokens, c.min_new_tokens + 5, 40):
        for _ in range(20):
            ids = _random_walk(c, rng, n)
            text = "".join(TOY[i] if isinstance(TOY[i], str) else TOY[i].decode("utf-8", "replace") for i in ids[:-1])
            assert len(ids) <= n and parse_judgement(text).ok, text


def test_generic_tokenizer_uses_decode_and_refuses_partial_characters():
    class Plain:  # only the `Tokenizer` interface: no .sp / .hf internals
        special_ids = {"im_end": 2, "pad": 3}
        pieces = ['{"score_A": ', "\ufffd", "<|im_end|>", "<|endoftext|>", "ok"]
        vocab_size = len(pieces)

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

    assert C.token_bytes(Plain()) == [b'{"score_A": ', None, None, None, b"ok"]


def test_unspellable_vocabulary_is_refused():
    with pytest.raises(ValueError, match="cannot spell"):
        C.build_constraint([t for t in TOY if t != "}" and not (isinstance(t, str) and "}" in t)], 0)


# ----------------------------------------------------------------------------------------------------
# Real tokenizers: SentencePiece (byte fallback) and byte-level BPE
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sp():
    return train_sentencepiece(corpus(), 480)


def test_sentencepiece_tables_cached_and_exact(sp, monkeypatch):
    calls = []
    orig = C.build_constraint
    monkeypatch.setattr(C, "build_constraint", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    fresh = train_sentencepiece(corpus(), 480)  # a new object: not cached yet
    c = C.judgement_constraint(fresh)
    assert C.judgement_constraint(fresh) is c and len(calls) == 1, "built twice for one tokenizer"
    assert C.judgement_constraint(fresh, vocab_size=fresh.vocab_size + 8) is not c and len(calls) == 2
    toks = C.token_bytes(fresh)
    assert toks[fresh.special_ids["im_end"]] is None and toks[0] is None  # specials and <unk> never allowed
    assert sum(fresh.sp.is_byte(i) and toks[i][0] >= 0x80 for i in range(fresh.vocab_size)) == 128
    _oracle_check(c, toks, C.judgement_dfa(), range(fresh.vocab_size))
    rng = np.random.default_rng(1)
    for _ in range(50):
        ids = _random_walk(c, rng, c.min_new_tokens + 30)
        assert parse_judgement(fresh.decode(ids[:-1])).ok


@pytest.fixture(scope="module")
def bpe_tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from omnirrm_jax.data.tokenizer import HFTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=700, special_tokens=list(SPECIAL_TOKENS.values()),
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    extra = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>", extra_special_tokens=extra))


def test_byte_level_bpe_tables(bpe_tok):
    tok = bpe_tok
    c = C.judgement_constraint(tok)
    toks = C.token_bytes(tok)
    partial = [i for i, b in enumerate(toks) if b and b[-1] >= 0x80 and "\ufffd" in tok.decode([i])]
    assert partial, "expected tokens that end inside a UTF-8 sequence"
    free = c.state_after(tok.encode('{"score_A": 1, "score_B": 1, "better": "equal", "reasoning": "<think>'))
    assert free >= 0 and set(partial) <= set(c.allowed_ids(free).tolist())
    assert not set(partial) & set(c.allowed_ids(c.start).tolist())
    assert all(toks[i] is None for i in tok.special_ids.values())
    _oracle_check(c, toks, C.judgement_dfa(), range(tok.vocab_size))
    rng = np.random.default_rng(2)
    for _ in range(50):
        text = tok.decode(_random_walk(c, rng, c.min_new_tokens + 40)[:-1])
        assert parse_judgement(text).ok and format_reward([text]) == [1.0], text
    # every reference-format judgement is a path of the tables (the constraint never excludes the SFT target)
    for text in corpus()[:121:7]:
        assert c.state_after(tok.encode(text)) == c.accept


# ----------------------------------------------------------------------------------------------------
# 1,000 samples of an untrained tiny thinker
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(sp):
    base = config_lib.tiny()
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text, vocab_size=sp.vocab_size),
                              **thinker_token_ids(sp))
    model = thinker_lib.Thinker(cfg, rngs=nnx.Rngs(0))
    msgs = [[{"role": "user", "content": f"Compare answer A and B for question {i}. " * (i % 3 + 1)}] for i in range(8)]
    rows = [build_prompt_ids(sp, m, cfg=cfg) for m in msgs]
    S = max(map(len, rows))
    ids = np.full((8, S), sp.special_ids["pad"], np.int64)
    mask = np.zeros((8, S), np.int64)
    for i, r in enumerate(rows):
        ids[i, S - len(r):], mask[i, S - len(r):] = r, 1
    return model, cfg, thinker_lib.prepare_inputs(cfg, ids, mask)


def _sampling(sp, n, **kw):
    return SM.SamplingConfig(n, stop_token_ids=(sp.special_ids["im_end"],), pad_token_id=sp.special_ids["pad"], **kw)


def test_untrained_thinker_1000_constrained_samples_all_parse(sp, tiny_setup):
    model, cfg, inputs = tiny_setup
    c = C.judgement_constraint(sp, cfg.text.vocab_size)
    N = c.min_new_tokens + 40
    sampling = _sampling(sp, N, temperature=1.0, top_k=0, top_p=1.0, num_samples=125)
    res, texts = C.generate_judgements(model, sp, inputs, sampling, jax.random.key(0))
    flat = [t for row in texts for t in row]
    assert len(flat) == 1000 and np.asarray(res.finished).all() and np.asarray(res.lengths).max() <= N
    results = [parse_judgement(t) for t in flat]
    failures = [(t, r.error) for t, r in zip(flat, results) if not r.ok]
    assert not failures, f"{len(failures)} of 1000 failed, e.g. {failures[:3]}"
    assert format_reward(flat) == [1.0] * 1000
    assert all(json.loads(t)["better"] == r.verdict for t, r in zip(flat, results))
    # the device automaton and the host tables agree: every row replays to the accept state
    tok, lengths = np.asarray(res.tokens).reshape(1000, N), np.asarray(res.lengths).reshape(-1)
    assert all(c.state_after(tok[r, : lengths[r] - 1]) == c.accept for r in range(1000))
    assert np.isfinite(np.asarray(res.logprobs)).all()
    # variety, not one forced path: scores, verdicts and free text differ across samples
    assert len({(r.score_A, r.score_B) for r in results}) > 50 and {r.better for r in results} == {"A", "B", "equal"}
    assert len({r.reasoning for r in results}) > 900

    free = SM.generate(model, inputs, sampling, jax.random.key(0))
    free_texts = [t for row in C.decode_outputs(sp, free) for t in row]
    rate = sum(parse_judgement(t).ok for t in free_texts) / len(free_texts)
    print(f"\nuntrained tiny thinker, N={N}: constrained 1000/1000 parse and are consistent; "
          f"unconstrained parse rate {rate:.3f}")
    assert rate < 0.01


def test_constrained_generate_does_not_recompile_and_checks_arguments(sp, tiny_setup):
    model, cfg, inputs = tiny_setup
    c = C.judgement_constraint(sp, cfg.text.vocab_size)
    sampling = _sampling(sp, c.min_new_tokens + 3, temperature=0.7, top_k=20, top_p=0.9, num_samples=2)
    first = SM.generate(model, inputs, sampling, jax.random.key(0), constraint=c)
    with count_compiles() as compiles:
        same = C.judgement_constraint(sp, cfg.text.vocab_size)
        again = SM.generate(model, inputs, sampling, jax.random.key(1), constraint=same)
        jax.block_until_ready(again)
    assert compiles == [], f"recompiled: {compiles}"
    assert not np.array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    for res in (first, again):
        assert all(parse_judgement(t).ok for row in C.decode_outputs(sp, res) for t in row)
    greedy = SM.generate(model, inputs, _sampling(sp, c.min_new_tokens, greedy=True), jax.random.key(0), constraint=c)
    assert all(parse_judgement(t).ok for row in C.decode_outputs(sp, greedy) for t in row)
    with pytest.raises(ValueError, match="below the shortest"):
        SM.generate(model, inputs, _sampling(sp, c.min_new_tokens - 1), jax.random.key(0), constraint=c)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SM.generate(model, inputs, SM.SamplingConfig(64), jax.random.key(0), constraint=c)
    with pytest.raises(ValueError, match="vocab"):
        SM.generate(model, inputs, sampling, jax.random.key(0),
                    constraint=C.judgement_constraint(sp, cfg.text.vocab_size + 8))


def test_sampled_parse_rates_counts_both_modes(sp, tiny_setup):
    """eval.judge.sampled_parse_rates (the demo model's 1,000-sample check, docs/RESULTS.md): an untrained model
    parses only under the constraint; a batch marked invalid is skipped; the count stops at `samples`."""
    from omnirrm_jax.eval.judge import sampled_parse_rates

    model, cfg, inputs = tiny_setup
    valid = np.array([True] * 7 + [False])
    N = C.judgement_constraint(sp, cfg.text.vocab_size).min_new_tokens + 40
    out = sampled_parse_rates(model, sp, [dict(inputs, valid=valid)] * 2, samples=100, per_prompt=2, max_new_tokens=N)
    assert out["constrained"] == {"n": 28, "parsed": 28, "consistent": 28}  # 2 batches x 7 valid prompts x 2
    assert out["unconstrained"]["n"] == 28 and out["unconstrained"]["parsed"] == 0
    out = sampled_parse_rates(model, sp, [inputs] * 2, samples=10, per_prompt=2, max_new_tokens=N)
    assert out["constrained"]["n"] == out["unconstrained"]["n"] == 10
