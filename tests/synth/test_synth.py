"""`omnirrm synth` against a real teacher server on localhost (tests.synth.fake_teacher, a FastAPI + uvicorn
subprocess): faults (429, 500, fenced and sloppy JSON, unparseable replies, a teacher that never answers, a budget),
consensus, outputs that `omnirrm prep` accepts, and resume after a kill with no teacher request paid twice."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from omnirrm_jax import cli
from tests.synth.fake_teacher import FakeTeacher
from tests.synth.helpers import demo_sources, seed_candidates, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "sk-synth-test-never-logged-93c1"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return demo_sources(str(tmp_path_factory.mktemp("synth_src")), n=2)


@pytest.fixture()
def key_env(monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", KEY)


def _ok(reqs, model=None):
    return [r for r in reqs if r["status"] == 200 and (model is None or r["model"] == model)]


def _read(path):
    return [json.loads(line) for line in open(path)]


def _cli(cfg_path, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", SYNTH_TEST_KEY=KEY, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "omnirrm_jax.cli", "synth", cfg_path], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_faults_consensus_outputs_and_prep(src, tmp_path, key_env, capsys):
    teacher = FakeTeacher(str(tmp_path), {"t1": {"fail_429": 2, "fail_500": 1, "fenced": True},
                                          "t2": {"sloppy": True, "contrary": True}})
    try:
        cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), teacher.url)
        prompts = seed_candidates(cfg, markers={0: "SPLIT", 2: "TIE", 4: "CONTRA", 6: "GARBLE"})
        assert cli.main(["synth", cfg]) == 0
        report = json.load(open(tmp_path / "out" / "synth_report.json"))
        reqs = teacher.requests()
        n = len(prompts)
        assert n == 8  # 2 per modality; the duplicate and the bad rows are out
        assert report["prompts"]["bad_by_reason"] == {"missing_media": 1, "path_escape": 1, "bad_csv_row": 1,
                                                       "malformed_json": 1}
        assert report["prompts"]["by_source"]["rlaif_v.json"]["duplicate"] == 1
        # t1: 429, 429, 500, then the answer, for every pair; t2 once each
        assert len([r for r in reqs if r["model"] == "t1"]) == 4 * n and len(_ok(reqs, "t1")) == n
        assert len(_ok(reqs, "t2")) == n
        assert {r["auth"] for r in reqs if r["model"] == "t1"} == {f"Bearer {KEY}"}
        assert {r["auth"] for r in reqs if r["model"] == "t2"} == {""}
        parts = {tuple(r["parts"]) for r in _ok(reqs)}
        assert ("image_url", "text") in parts and ("input_audio", "text") in parts and ("text",) in parts
        assert ("image_url", "image_url", "text") in parts  # the 2 s demo video at 1 fps
        cons = report["consensus"]
        assert cons["rejected"] == {"disagree": 1, "tie": 1, "scores_contradict_verdict": 1,
                                    "teacher_unparseable": 1}
        assert cons["kept"] == n - 4 == report["output"]["rows"]
        assert report["teachers"]["unparseable_replies"] == {"no_json": 1}
        assert report["teachers"]["mended_replies"] >= n - 1  # t2's sloppy JSON and t1's fences
        assert report["cost_usd"]["all_runs"] > 0 and report["tokens"]["all_runs"]["alpha"]["prompt_tokens"] > 0
        bal = report["output"]["label_balance"]["all"]
        assert bal["A"] + bal["B"] == n - 4
        for name in os.listdir(tmp_path / "out"):
            assert KEY not in open(tmp_path / "out" / name).read(), name
        assert KEY not in capsys.readouterr().err
        sft, grpo = _read(tmp_path / "out" / "sft.jsonl"), _read(tmp_path / "out" / "grpo.jsonl")
        assert [r["id"] for r in sft] == [r["id"] for r in grpo]
        for s, g in zip(sft, grpo):
            assert json.loads(s["messages"][1]["content"])["better"] == g["better"] in ("A", "B")
            assert g["solution"] == s["messages"][1]["content"]
        # a rerun pays for nothing and writes the same files
        before = {f: open(tmp_path / "out" / f, "rb").read() for f in ("sft.jsonl", "grpo.jsonl")}
        assert cli.main(["synth", cfg]) == 0
        assert len(teacher.requests()) == len(reqs)
        assert before == {f: open(tmp_path / "out" / f, "rb").read() for f in before}
    finally:
        teacher.stop()
    for split, name in (("train", "sft.jsonl"), ("grpo", "grpo.jsonl")):
        assert cli.main(["prep", "--jsonl", str(tmp_path / "out" / name), "--media-root", src["media_root"],
                         "--out", str(tmp_path / "prep"), "--split", split, "--workers", "0",
                         "--max-bad-ratio", "0"]) == 0
        summary = json.load(open(tmp_path / "prep" / "summary.json"))["splits"][split]
        assert summary["records"] == n - 4 and summary["by_modality"] == dict.fromkeys(("audio", "image", "text", "video"), 1), summary


def _clean_output(src, tmp_path, teacher) -> bytes:
    cfg = write_config(str(tmp_path / "clean.yaml"), src, str(tmp_path / "clean"), teacher.url)
    seed_candidates(cfg)
    assert cli.main(["synth", cfg]) == 0
    return open(tmp_path / "clean" / "sft.jsonl", "rb").read() + open(tmp_path / "clean" / "grpo.jsonl", "rb").read()


def test_injected_crash_then_resume_repays_nothing(src, tmp_path, key_env):
    teacher = FakeTeacher(str(tmp_path), {})
    try:
        clean = _clean_output(src, tmp_path, teacher)
        start = len(teacher.requests())
        # one request in flight, so none is answered-but-uncached at the crash (the SIGKILL test covers those)
        cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), teacher.url,
                           teacher_run={"concurrency": 1})
        n = len(seed_candidates(cfg))
        p = _cli(cfg, {"OMNIRRM_SYNTH_CRASH_AFTER": "5"})
        assert p.wait(300) == 17, p.stderr.read()
        assert len(_read(tmp_path / "out" / "teacher_cache.jsonl")) == 5
        p = _cli(cfg)
        assert p.wait(300) == 0, p.stderr.read()
        new = _ok(teacher.requests()[start:])
        assert len(new) == 2 * n and len({(r["model"], r["key"]) for r in new}) == 2 * n   # none asked twice
        out = open(tmp_path / "out" / "sft.jsonl", "rb").read() + open(tmp_path / "out" / "grpo.jsonl", "rb").read()
        assert out == clean
    finally:
        teacher.stop()


def test_sigkill_at_a_random_point_then_resume(src, tmp_path, key_env):
    teacher = FakeTeacher(str(tmp_path), {"t1": {"slow_s": 0.2}, "t2": {"slow_s": 0.2}})
    try:
        clean = _clean_output(src, tmp_path, teacher)
        cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), teacher.url,
                           teacher_run={"concurrency": 2})
        n = len(seed_candidates(cfg))
        cache = tmp_path / "out" / "teacher_cache.jsonl"
        k = random.Random(os.getpid()).randint(1, 2 * n - 2)
        p = _cli(cfg)
        deadline = time.monotonic() + 120
        while not (cache.exists() and len(cache.read_bytes().splitlines()) >= k) and time.monotonic() < deadline:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(0.5)  # requests in flight at the kill finish at the teacher (paid, never cached)
        at_kill = len(_read(cache))
        start = len(teacher.requests())
        p = _cli(cfg)
        assert p.wait(300) == 0, p.stderr.read()
        assert len(_ok(teacher.requests()[start:])) == 2 * n - at_kill, (k, at_kill)
        assert len(_read(cache)) == 2 * n
        out = open(tmp_path / "out" / "sft.jsonl", "rb").read() + open(tmp_path / "out" / "grpo.jsonl", "rb").read()
        assert out == clean
    finally:
        teacher.stop()


def test_silent_teacher_and_budget_are_counted_not_fatal(src, tmp_path, key_env):
    teacher = FakeTeacher(str(tmp_path), {"t2": {"hang": True}})
    try:
        cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), teacher.url,
                           teacher_run={"timeout_s": 0.5, "max_retries": 1})
        n = len(seed_candidates(cfg))
        assert cli.main(["synth", cfg]) == 0
        report = json.load(open(tmp_path / "out" / "synth_report.json"))
        beta = report["teachers"]["this_run"]["beta"]
        assert beta["failed"] == {"timeout": n} and beta["failed_pairs"][0]["reason"] == "timeout"
        assert report["consensus"]["rejected"] == {"teacher_missing": n} and report["output"]["rows"] == 0
        assert report["teachers"]["this_run"]["alpha"]["answered"] == n
        # a teacher that fails 2 requests in a row is not asked again: counted, and the command says so (exit 1)
        cfg_stop = write_config(str(tmp_path / "s.yaml"), src, str(tmp_path / "out3"), teacher.url,
                                teacher_run={"timeout_s": 0.5, "max_retries": 0, "concurrency": 1,
                                             "max_failures_in_a_row": 2})
        seed_candidates(cfg_stop)
        assert n > 2 and cli.main(["synth", cfg_stop]) == 1
        beta = json.load(open(tmp_path / "out3" / "synth_report.json"))["teachers"]["this_run"]["beta"]
        assert beta["failed"] == {"timeout": 2, "teacher_stopped": n - 2}, beta["failed"]
        # a budget of 3 requests: 3 answered, the rest counted; a rerun without it asks only for the rest
        cfg2 = write_config(str(tmp_path / "b.yaml"), src, str(tmp_path / "out2"), teacher.url, t2="t1",
                            teacher_run={"max_requests": 3})
        seed_candidates(cfg2)
        start = len(teacher.requests())
        assert cli.main(["synth", cfg2]) == 0
        r2 = json.load(open(tmp_path / "out2" / "synth_report.json"))
        assert r2["teachers"]["requests_this_run"] == 3
        failed = sum(t["failed"].get("budget_exhausted", 0) for t in r2["teachers"]["this_run"].values())
        assert failed == 2 * n - 3
        cfg3 = write_config(str(tmp_path / "b.yaml"), src, str(tmp_path / "out2"), teacher.url, t2="t1")
        assert cli.main(["synth", cfg3]) == 0
        assert len(_ok(teacher.requests()[start:])) == 2 * n
        assert json.load(open(tmp_path / "out2" / "synth_report.json"))["consensus"]["kept"] == n
    finally:
        teacher.stop()


@pytest.mark.slow
def test_sft_trains_on_the_synth_output(src, tmp_path, key_env):
    """The whole path a user takes: synth -> `omnirrm prep` -> SFT (a few steps of a tiny thinker with a tokenizer
    trained on the synthesized rows) -> a finite loss and a saved checkpoint."""
    import dataclasses

    from omnirrm_jax.data.tokenizer import train_sentencepiece
    from omnirrm_jax.demo import DemoConfig
    from omnirrm_jax.demo.sft import sft_config
    from omnirrm_jax.training import sft

    teacher = FakeTeacher(str(tmp_path), {})
    try:
        _clean_output(src, tmp_path, teacher)
    finally:
        teacher.stop()
    rows = _read(tmp_path / "clean" / "sft.jsonl")
    assert rows and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    shards = str(tmp_path / "shards")
    assert cli.main(["prep", "--jsonl", str(tmp_path / "clean" / "sft.jsonl"), "--media-root", src["media_root"],
                     "--out", shards, "--split", "train", "--workers", "0", "--max-bad-ratio", "0"]) == 0
    tok_prefix = str(tmp_path / "tok")
    train_sentencepiece([m["content"] for r in rows for m in r["messages"]], 800, tok_prefix, split_digits=True)
    demo_cfg = DemoConfig(workdir=str(tmp_path), steps=3, batch_size=8)
    cfg = sft_config(demo_cfg, shards, tok_prefix + ".model", str(tmp_path / "sft"))
    pipeline = dict(cfg.data.pipeline, seq_buckets=(1024, 2048, 4096))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval=(), pipeline=pipeline))
    out = sft.train(cfg)
    logged = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert losses and all(0 < x < 100 for x in losses), losses
    assert os.listdir(tmp_path / "sft" / "checkpoints") and int(out["state"].step) == 3


def test_pair_order_is_stable_when_sources_grow():
    """A pair's A/B order (so its prompt hash and cached replies) is decided once and kept when pairs come or go;
    new pairs fill each modality toward half strong-first."""
    from omnirrm_jax.synth.run import order_pairs

    pairs = [{"id": f"p{i}", "modality": m} for i in range(9) for m in ("image", "audio")]
    first = order_pairs(pairs, seed=0)
    assert [sum(first[p["id"]] for p in pairs if p["modality"] == m) for m in ("image", "audio")] in ([4, 4], [4, 5],
                                                                                                    [5, 4], [5, 5])
    assert order_pairs([dict(p) for p in pairs], seed=0) == first  # the same choice on every run
    more = [dict(p) for p in pairs[:10]] + [{"id": f"q{i}", "modality": "image"} for i in range(7)]
    orders = order_pairs(more, seed=0, known=first)
    assert all(p["strong_first"] == first[p["id"]] for p in more if p["id"] in first)
    image = [orders[p["id"]] for p in more if p["modality"] == "image"]
    assert abs(2 * sum(image) - len(image)) <= 1 + abs(2 * sum(first[p["id"]] for p in pairs[:10]
                                                           if p["modality"] == "image") - 5)


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"max_retries": -1}, {"timeout_s": "30"},
                                 {"max_requests": 1.5}, {"concurrency": True}])
def test_bad_teacher_run_values_are_one_line_errors(src, tmp_path, bad):
    import yaml

    from omnirrm_jax.errors import UserError
    from omnirrm_jax.synth import config as C

    path = write_config(str(tmp_path / "s.yaml"), src, str(tmp_path / "out"), "http://127.0.0.1:9")
    raw = yaml.safe_load(open(path))
    raw["teacher_run"] = {**(raw.get("teacher_run") or {}), **bad}
    with pytest.raises(UserError, match=f"teacher_run.{next(iter(bad))}: expected"):
        C.from_dict(raw, str(tmp_path))


def test_replies_that_broke_a_run_are_kept_unusable_not_fatal():
    """A lone surrogate (half an emoji) cannot be written as UTF-8 and a 5000-digit score string overflows int():
    both once stopped the whole run, and every rerun at the same pair."""
    from omnirrm_jax.synth.repair import repair_judgement
    from omnirrm_jax.synth.teacher import _clean_text
    assert _clean_text("ok \ud83d") == "ok \ufffd" and _clean_text("ok \U0001F600") == "ok \U0001F600"
    _clean_text("ok \ud83d").encode("utf-8")
    reply = json.dumps({"score_A": "5" * 5000, "score_B": 3, "better": "A", "reasoning": "fine"})
    assert repair_judgement(reply)[:2] == (None, "bad_scores")


@pytest.mark.parametrize("start_s", [0, 20])
def test_video_frames_at_1_fps_whenever_the_stream_starts(tmp_path, start_s):
    """A stream whose first frame is at 20 s (cut without re-encoding, MPEG-TS) gets 1 frame a second too, not every
    frame until the clock reaches 20 s."""
    import av
    import numpy as np

    from omnirrm_jax.synth.media_parts import video_frames
    path, fps = str(tmp_path / "v.mp4"), 10
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(6 * fps):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 3 % 255, np.uint8), format="rgb24")
            f.pts = start_s * fps + i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert len(video_frames(path, fps=1.0, max_frames=35)) == 6
    assert len(video_frames(path, fps=2.0, max_frames=35)) == 12
    assert len(video_frames(path, fps=2.0, max_frames=5)) == 5


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    from omnirrm_jax.synth.sources import _json_rows
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "a\u2028b\x85c"}, ensure_ascii=False) + "\n"
                    + json.dumps({"question": "d"}) + "\n", encoding="utf-8")
    rows = [r for _, r in _json_rows(str(path))]
    assert [r["question"] for r in rows] == ["a\u2028b\x85c", "d"]


def test_a_literal_media_tag_in_a_question_or_answer_is_counted_not_sent():
    """`omnirrm prep` reads "<audio>" in a prompt as a media slot and refuses the row: synth counts such prompts and
    pairs at the start instead of paying teachers for rows that training would refuse."""
    from omnirrm_jax.synth.run import make_pairs
    from omnirrm_jax.synth.sources import Prompt, _Bad, _parse
    with pytest.raises(_Bad, match="literal <audio>"):
        _parse("jsonl", {"question": "How do I autoplay an <audio> element?"})
    assert _parse("jsonl", {"question": "How do I autoplay an audio element?"})[2].startswith("How")
    prompts = [Prompt(id=f"p{i}", modality="text", media=None, question="q", source="s") for i in range(2)]
    answers = {("p0", "s"): {"text": "Use <image> here"}, ("p0", "w"): {"text": "no"},
               ("p1", "s"): {"text": "yes"}, ("p1", "w"): {"text": "no"}}
    pairs, skipped, _ = make_pairs(prompts, answers, "s", "w", 0)
    assert [p["id"] for p in pairs] == ["p1"] and skipped == {"media_tag_in_answer": 1}


@pytest.mark.parametrize("reply,want", [
    ("{'score_A': 8, 'score_B': 3, 'better': 'A', 'reasoning': \"A doesn't hallucinate\"}", ("A", 8, 3)),
    ('{"score_A": 8, "score_B": 3, "better": "A", "reasoning": "Fluency: fine, accuracy: A is right",}', ("A", 8, 3)),
    ('{score_A: 8, score_B: 3, better: "A", reasoning: "clear, accuracy: A wins"}', ("A", 8, 3)),
    ('{"score_A": 3, "score_B": 8, "reasoning": "B", "final_verdict": "<answer>[[B]]</answer>"}', ("B", 3, 8)),
    ('{"score_A": 5, "score_B": 5, "better": "Equal", "reasoning": "same"}', ("equal", 5, 5)),
    ('{"score_A": 8, "score_B": 3, "better": "A", "reasoning": "r", "final_verdict": "[[B]]"}', "verdict_conflict"),
], ids=["python-dict", "trailing-comma-text-colon", "unquoted-keys-text-colon", "final-verdict-only", "Equal",
        "conflict"])
def test_sloppy_replies_are_mended_without_touching_strings(reply, want):
    from omnirrm_jax.synth.repair import repair_judgement
    j, why, _ = repair_judgement(reply)
    if isinstance(want, str):
        assert (j, why) == (None, want)
    else:
        assert why == "" and (j["better"], j["score_A"], j["score_B"]) == want
        assert "accuracy" not in reply or "accuracy: A" in j["reasoning"]  # the string as written


def test_a_missing_teacher_key_stops_the_run_before_any_answer_is_written(src, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SYNTH_TEST_KEY", raising=False)
    cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), "http://127.0.0.1:9/v1")
    assert cli.main(["synth", cfg]) == 2
    assert "SYNTH_TEST_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "out" / "candidates.jsonl").exists()


def test_answers_of_another_writer_are_refused_not_reused(tmp_path):
    from omnirrm_jax.errors import UserError
    from omnirrm_jax.synth.candidates import write_candidates, writer_settings
    from omnirrm_jax.synth.config import CandidateSpec, PolicySpec
    from omnirrm_jax.synth.sources import Prompt
    old = CandidateSpec(strong=PolicySpec("strong", checkpoint="/ckpt/a"), weak=PolicySpec("weak", checkpoint="/w"))
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps({"id": "p0", "model": p.label, "writer": writer_settings(p), "text": "t"}) + "\n"
                            for p in (old.strong, old.weak)))
    prompts = [Prompt(id="p0", modality="text", media=None, question="q", source="s")]

    def no_load(policy):
        raise AssertionError("nothing is missing")
    assert write_candidates(prompts, old, str(path), str(tmp_path), no_load)["strong"]["cached"] == 1
    new = CandidateSpec(strong=PolicySpec("strong", checkpoint="/ckpt/b"), weak=old.weak)
    with pytest.raises(UserError, match=r"'strong' were written with \['checkpoint'\]"):
        write_candidates(prompts, new, str(path), str(tmp_path), no_load)


def test_media_gone_since_the_prompts_stage_is_counted_not_fatal(tmp_path):
    from omnirrm_jax.synth.config import TeacherRun, TeacherSpec
    from omnirrm_jax.synth.teacher import annotate
    pair = {"id": "p0", "modality": "image", "media": "gone.png", "question": "q", "answer_a": "a", "answer_b": "b"}
    teachers = (TeacherSpec("t1", base_url="http://127.0.0.1:9/v1", model="m"),)
    stats = annotate([pair], teachers, TeacherRun(), str(tmp_path / "cache.jsonl"), str(tmp_path))
    assert stats["teachers"]["t1"]["failed"] == {"unreadable_media": 1} and pair["keys"]["t1"].endswith("unreadable")


def test_a_second_run_on_the_same_out_dir_is_refused(src, tmp_path, key_env, capsys):
    import fcntl
    cfg = write_config(str(tmp_path / "synth.yaml"), src, str(tmp_path / "out"), "http://127.0.0.1:9/v1")
    os.makedirs(tmp_path / "out")
    with open(tmp_path / "out" / ".synth.lock", "w") as held:  # a running synth holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["synth", cfg]) == 2
    assert "another omnirrm synth is running" in capsys.readouterr().err
