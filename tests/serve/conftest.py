"""Fixtures of the serve tests: the tiny judge (tests.eval.judge_env), its pairs, and the offline answers the
server must reproduce (the `omnirrm judge` code path in this process: Judge.run_file, and eval.reward for
/v1/reward)."""
import base64
import json
import os

import pytest

from tests.eval.judge_env import judge_env
from tests.serve.server_proc import MAX_NEW

KEY = "test-key-not-logged-7f3a"


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    return judge_env(str(tmp_path_factory.getbasetemp() / "judge_env"))


def pair_rows(env) -> list[dict]:
    """Pairs of varied lengths, one with an image (a path under the media root)."""
    return [{"question": "What is 3 + 4?", "answer_a": "7", "answer_b": "5"},
            {"question": "Is the tone high or deep?", "answer_a": "high " * 12, "answer_b": "deep"},
            {"question": "What colour is the shape? " * 3, "answer_a": "blue", "answer_b": "pink pink"},
            {"question": "What colour is the shape?", "answer_a": "blue", "answer_b": "pink",
             "images": [os.path.basename(env["image"])]}]


def request_body(row: dict, env, data_url: bool = False) -> dict:
    """A pair row -> a /v1/judge body (media under "media"; the image as a data: URL if asked)."""
    body = {k: v for k, v in row.items() if k != "images"}
    if row.get("images"):
        with open(env["image"], "rb") as f:
            url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        body["media"] = {"images": [url if data_url else p for p in row["images"]]}
    return body


@pytest.fixture(scope="session")
def offline(env, tmp_path_factory):
    """{"judge": records of `omnirrm judge --swap` (Judge.run_file) by row, "reward": eval.reward records}."""
    from data_prep.rows import RowOptions
    from omnirrm_jax.eval.judge_runner import Judge, load_judge
    from omnirrm_jax.eval.reward import reward_records

    root = tmp_path_factory.mktemp("offline")
    rows = pair_rows(env)
    media_root = os.path.dirname(env["image"])
    inp, out = root / "pairs.jsonl", root / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, cfg, tok = load_judge(env["hf_dir"], tokenizer=env["tok_path"])
    judge = Judge(model, cfg, tok, swap=True, constrained=True, max_new_tokens=int(MAX_NEW), batch_size=8)
    judge.run_file(str(inp), str(out), media_root=media_root)
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["line"])
    opts = RowOptions(media_root=media_root, media=judge.media)
    rewards = reward_records(judge, [judge.prepare(i, r, opts) for i, r in enumerate(rows)])
    return {"judge": records, "reward": rewards}


def assert_same_judgement(served: dict, offline: dict) -> None:
    """Served /v1/judge answer == offline record: text and parsed fields exactly, probabilities to fp noise
    (batches of other sizes and padding lengths reorder float sums)."""
    for key in ("judgement", "text", "ok", "parse_error", "better", "modality", "verdict_field"):
        assert served[key] == offline[key], (key, served[key], offline[key])
    assert_close(served["probs"], offline["probs"])
    assert_close(served["reward"], offline["reward"])
    if "swap" in offline:
        assert served["swap"]["text"] == offline["swap"]["text"]
        assert_close(served["swap"]["probs"], offline["swap"]["probs"])
        assert_close(served["combined"]["probs"], offline["combined"]["probs"])
        assert served["combined"]["verdict"] == offline["combined"]["verdict"]


def assert_close(a, b, tol: float = 2e-5) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), (a, b)
        for k in a:
            assert_close(a[k], b[k], tol)
    else:
        assert a is not None and b is not None and abs(a - b) <= tol, (a, b)
