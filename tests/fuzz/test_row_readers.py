"""Fuzz over the readers that face users' files (issue 21): the judge's (`read_pairs` -> `Judge.prepare`'s
`check_pair` + `prepare_pair`) and prep's (`process_row`). Random bytes, random JSON values, deep nesting, huge
strings and wrong types in every field: each line must end as a prepared pair / record or as a named rejection
(PairError, a quarantine reason), never as an exception that stops a run or an `internal_error`.

Seeded, so CI sees the same cases every time; a failure prints the offending line."""
import dataclasses
import json
import random

import pytest

from data_prep import rows as W
from omnirrm_jax.data.media import MediaConfig
from omnirrm_jax.data.tokenizer import thinker_token_ids, train_sentencepiece
from omnirrm_jax.eval import judge_runner as CJ
from omnirrm_jax.eval import pairs
from omnirrm_jax.models.config import tiny
from omnirrm_jax.rubric import prompts

N_CASES = 1000
FIELDS = ["question", "answer_a", "answer_b", "images", "videos", "audios", "modality", "template", "id", "better",
          "messages", "score_A", "score_B", "solution", "cmp_gt"]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2 ** 70, 1.5e308, -0.0])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(["", "a.png", "../../etc/passwd", "/abs/x.wav", "<image>", "<|im_end|>", "\x00", "C:\\x"])
    if kind == 4:
        return "x" * rng.choice([1, 1000, 100_000])
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(FIELDS + ["role", "content", "zz"]): _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _line(rng: random.Random) -> bytes:
    """One input line of a random kind."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes (newlines removed: one line each)
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b" ")
    if kind == 1:  # deep nesting
        d = rng.choice([50, 5_000, 200_000])
        return (b"[" * d + b"]" * d) if rng.random() < 0.5 else (b'{"a":' * d + b"1" + b"}" * d)
    if kind == 2:  # any JSON value
        return json.dumps(_value(rng)).encode()
    # a row with plausible keys and random values, sometimes a valid pair with one field broken
    row = {"question": "What is 3 + 4?", "answer_a": "7", "answer_b": "5"}
    for _ in range(rng.randrange(1, 4)):
        row[rng.choice(FIELDS)] = _value(rng)
    if kind == 5:
        row = {"messages": [{"role": "user", "content": "<image>Judge A and B"}, {"role": "assistant",
               "content": "{}"}], rng.choice(FIELDS): _value(rng)}
    text = json.dumps(row, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.2:
        text = text[: rng.randrange(len(text))]  # truncated
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def setup():
    corpus = [prompts.user_content(m, prompts.judge_prompt(m, "What is 3 + 4?", "7", "5"))
              for m in prompts.MODALITIES]
    tok = train_sentencepiece(corpus, 400)
    return tok, dataclasses.replace(tiny(), **thinker_token_ids(tok))


def test_judge_row_reader_never_raises_anything_but_a_named_rejection(setup, tmp_path):
    tok, cfg = setup
    rng = random.Random(0)
    lines = [_line(rng) for _ in range(N_CASES)]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    opts = W.RowOptions(media_root=str(tmp_path), media=MediaConfig())
    outcomes = {"prepared": 0}
    for n, row, _ in CJ.read_pairs(str(path)):
        try:
            if isinstance(row, pairs.PairError):
                raise row
            pair = pairs.check_pair(row)
            pairs.prepare_pair(pair, n, tok, cfg, opts, max_length=4096)
            outcomes["prepared"] += 1
        except pairs.PairError as e:
            outcomes[e.reason] = outcomes.get(e.reason, 0) + 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"line {n} raised {type(e).__name__}: {e}\n{lines[n - 1][:300]!r}")
    assert sum(outcomes.values()) == sum(1 for x in lines if x.strip())  # blank lines are skipped
    assert outcomes["prepared"] > 0 and outcomes.get("malformed_json", 0) > 0, outcomes


def test_prep_row_reader_quarantines_with_a_named_reason(tmp_path):
    rng = random.Random(1)
    opts = W.RowOptions(media_root=str(tmp_path))
    reasons = {}
    for i in range(N_CASES):
        line = _line(rng)
        data, _, bad = W.process_row(("fuzz.jsonl", i + 1, line), opts)
        if bad is None:
            assert data
            reasons["ok"] = reasons.get("ok", 0) + 1
            continue
        assert bad["reason"] != "internal_error", (bad, line[:300])
        reasons[bad["reason"]] = reasons.get(bad["reason"], 0) + 1
    assert reasons.get("malformed_json", 0) > 0 and len(reasons) >= 3, reasons
