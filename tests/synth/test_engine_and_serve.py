"""`omnirrm synth` end to end with real models: the candidates written by our jitted engine (the tiny thinker of
tests.eval.judge_env as both writers, greedy and at temperature 1), and `omnirrm serve` itself (the same tiny judge,
constrained) as both teachers through its /v1/chat/completions; the output goes through `omnirrm prep`."""
import json

import pytest
import yaml

from omnirrm_jax import cli
from tests.eval.judge_env import judge_env
from tests.serve.server_proc import ServerProc
from tests.synth.helpers import demo_sources, write_config


@pytest.mark.slow
def test_engine_candidates_and_serve_as_teacher(tmp_path, monkeypatch):
    env = judge_env(str(tmp_path / "judge_env"))
    src = demo_sources(str(tmp_path / "src"), n=1)
    monkeypatch.setenv("SYNTH_TEST_KEY", "serve-key-1")
    server = ServerProc(env, str(tmp_path), "--warmup", "none", "--max-batch", "4", "--api-key-env",
                        "SYNTH_TEST_KEY", extra_env={"SYNTH_TEST_KEY": "serve-key-1"})
    try:
        writer = {"checkpoint": env["hf_dir"], "tokenizer": env["tok_path"], "dtype": "float32"}
        cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), server.url + "/v1",
                           t1="omnirrm", t2="omnirrm",
                           candidates={"strong": {**writer, "temperature": 0.0},
                                       "weak": {**writer, "temperature": 1.0},
                                       "max_new_tokens": {"image": 8, "video": 8, "audio": 8, "text": 8}},
                           teacher_run={"timeout_s": 300, "concurrency": 2})
        with open(cfg) as f:
            raw = yaml.safe_load(f)
        for t in raw["teachers"]:
            t["max_tokens"] = 50   # the constrained tiny judge's replies fit (server_proc.MAX_NEW)
        with open(cfg, "w") as f:
            yaml.safe_dump(raw, f)
        # the second teacher sends no key: serve answers 401, a failure counted by reason, never fatal
        assert cli.main(["synth", cfg]) == 0
    finally:
        server.stop()
    report = json.load(open(tmp_path / "out" / "synth_report.json"))
    cands = [json.loads(line) for line in open(tmp_path / "out" / "candidates.jsonl")]
    assert {c["model"] for c in cands} == {"strong", "weak"} and len(cands) == 2 * report["prompts"]["kept"]
    assert report["candidates"]["this_run"]["strong"]["written"] == report["prompts"]["kept"] == 4
    alpha, beta = report["teachers"]["this_run"]["alpha"], report["teachers"]["this_run"]["beta"]
    pairs = report["candidates"]["pairs"]
    assert alpha["answered"] == pairs and alpha["prompt_tokens"] > 0
    assert beta["failed"] == {"http_401": pairs}
    assert pairs > 0 and report["consensus"]["rejected"] == {"teacher_missing": pairs}
