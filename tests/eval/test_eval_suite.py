"""`omnirrm eval` end to end on a saved tiny HF thinker: small files in all six released formats (JSONL, a JSON list,
parquet with embedded image / audio bytes, a video found by its MSR-VTT id) with real media, one bad row each in two
of them; the suite writes judgements, per-benchmark scores, report.md/.json/.png; a run killed mid-line resumes with
no row lost or duplicated; `eval score` re-computes the same numbers without the model; a judgements file from other
data is refused."""
import io
import json
import os

import pytest

from omnirrm_jax import cli
from omnirrm_jax.eval import benchmarks as B
from omnirrm_jax.eval.runner import read_lines
from tests.eval.judge_env import judge_env

ROWS = 3  # per benchmark


def _png_bytes(color) -> bytes:
    import numpy as np
    from PIL import Image

    px = np.full((56, 56, 3), 200, np.uint8)
    px[8:40, 10:44] = color
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")


def make_data(root, env) -> dict[str, dict]:
    """Six benchmark files (3 rows each, one extra bad row in HH and Multimodal RewardBench) and their media."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.data.test_media import _write_mp4

    os.makedirs(root / "media" / "images", exist_ok=True)
    with open(env["image"], "rb") as f:
        png = f.read()
    with open(env["audio"], "rb") as f:
        wav = f.read()
    (root / "media" / "images" / "a.png").write_bytes(png)
    (root / "media" / "q.wav").write_bytes(wav)
    for v in ("video1026", "video8436"):
        _write_mp4(root / "media" / f"{v}.mp4", seconds=2, fps=4, w=56, h=56)
    qa = [("What colour is the shape?", "blue", "pink"), ("Is the tone high or deep?", "high", "deep"),
          ("What is 3 + 4?", "7", "5")]
    out = {}
    _jsonl(root / "hh.jsonl", [{"text_prompt": q, "answer_a": a, "answer_b": b, "label": i % 2}
                               for i, (q, a, b) in enumerate(qa)], raw_lines=['{"text_prompt": "broken'])
    out["hh_rlhf"] = {"data": "hh.jsonl", "media_root": "media"}
    _jsonl(root / "audio_hh.jsonl", [{"audio_prompt": "q.wav", "answer_a": a, "answer_b": b, "label": 0}
                                     for _, a, b in qa])
    out["audio_hh_rlhf"] = {"data": "audio_hh.jsonl", "media_root": "media"}
    _jsonl(root / "video.jsonl", [{"id": f"{v}_{k}", "video": "/path/to/resource", "query": q, "answer_a": a,
                                   "answer_b": b, "score_diff": 2.0, "label": 0}
                                  for k, (v, (q, a, b)) in enumerate(zip(("video1026", "video8436", "video1026"), qa))])
    out["sharegpt_video"] = {"data": "video.jsonl", "media_root": "media"}
    mm = [{"Category": cat, "ID": rid, "Text": None if k == 0 else q, "Image": "images/a.png", "Output1": a,
           "Output2": b, "Better": "Output1" if k % 2 == 0 else "Output2"}
          for k, (cat, rid, (q, a, b)) in enumerate(zip(("reasoning", "reasoning", "safety"),
                                                        ("mathvista_1", "code_2", "pairs_3"), qa))]
    mm.append({"Category": "safety", "ID": "tox_4", "Text": "q", "Image": "images/missing.png", "Output1": "a",
               "Output2": "b", "Better": "Output1"})
    (root / "mm.json").write_text(json.dumps(mm))
    out["mm_rewardbench"] = {"data": "mm.json", "media_root": "media"}
    pq.write_table(pa.table({
        "id": [f"vl{k}" for k in range(ROWS)], "query": [q for q, _, _ in qa],
        "response": [[a, b] for _, a, b in qa],
        "image": [{"bytes": _png_bytes((40 * k, 90, 200)), "path": f"img{k}.png"} for k in range(ROWS)],
        "human_ranking": [[0, 1], [1, 0], [0, 1]], "models": [["m1", "m2"]] * ROWS,
        "judge": ["human"] * ROWS, "rationale": ["r"] * ROWS, "query_source": ["src"] * ROWS}),
        root / "vl.parquet")
    out["vl_rewardbench"] = {"data": "vl.parquet", "media_root": "media"}
    pq.write_table(pa.table({
        "prompt": [q for q, _, _ in qa], "audio": [{"bytes": wav, "path": "tone.wav"}] * ROWS,
        "response1": [a for _, a, _ in qa], "response2": [b for _, _, b in qa], "model1": ["x"] * ROWS,
        "model2": ["y"] * ROWS, "criteria": ["helpfulness"] * ROWS,
        "criteria_preference": ["response1", "tie", "response2"], "id": [f"t{k}" for k in range(ROWS)],
        "audio_path": ["tone.wav"] * ROWS}), root / "ta2t.parquet")
    out["ta2t"] = {"data": "ta2t.parquet", "media_root": "media"}
    return out


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    import yaml

    env = judge_env(str(tmp_path_factory.getbasetemp() / "judge_env"))
    root = tmp_path_factory.mktemp("eval_suite")
    benches = make_data(root, env)
    cfg = {"name": "tiny judge", "output_dir": "out",
           "model": {"checkpoint": env["hf_dir"], "tokenizer": env["tok_path"], "dtype": "float32"},
           "run": {"orders": "both", "seed": 3, "batch_size": 4, "max_new_tokens": 12},
           "benchmarks": benches}
    (root / "eval.yaml").write_text(yaml.safe_dump(cfg))
    code = cli.main(["eval", "suite", str(root / "eval.yaml"), "--no-progress"])
    return {"root": root, "env": env, "code": code, "benches": benches}


@pytest.mark.slow
def test_suite_writes_report_and_judgements(suite_run):
    root = suite_run["root"]
    assert suite_run["code"] == 0
    out = root / "out"
    for ext in ("md", "json", "png"):
        assert (out / f"report.{ext}").stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["scores"]) == set(B.BENCHMARKS)
    for name, s in rep["scores"].items():
        lines = read_lines(str(out / f"{name}.judgements.jsonl"))
        n_rows = ROWS + (name in ("hh_rlhf", "mm_rewardbench"))
        assert len(lines) == 2 * n_rows == len({(ln["index"], ln["order"]) for ln in lines}), name
        assert s["rows"] == n_rows and "accuracy" in s["reference"] and "accuracy" in s["omnirrm"]
        assert s["omnirrm"]["missing"] == 0
        judged = [ln for ln in lines if not ln["error"]]
        assert all(isinstance(ln["output"], str) for ln in judged)
        assert all(abs(sum(ln["probs"].values()) - 1) < 1e-6 for ln in judged if ln["probs"]), name
    # the bad rows became error lines, counted, the run went on
    mm = read_lines(str(out / "mm_rewardbench.judgements.jsonl"))
    assert {ln["error"]["reason"] for ln in mm if ln["error"]} == {"missing_file"}
    hh = read_lines(str(out / "hh_rlhf.judgements.jsonl"))
    assert [ln["error"]["reason"] for ln in hh if ln["error"]] == ["malformed_json"] * 2
    # the row's own fields are in each line; embedded media are described, not dumped
    vl = read_lines(str(out / "vl_rewardbench.judgements.jsonl"))
    assert {"query", "response", "human_ranking", "models", "order", "output"} <= set(vl[0])
    assert isinstance(vl[0]["image"]["bytes"], str)
    assert rep["scores"]["mm_rewardbench"]["reference"]["by_category"]
    md = (out / "report.md").read_text()
    assert "tiny judge (reference)" in md and "Omni-RRM-7B (SFT+RL)" in md and "Multimodal RewardBench" in md


@pytest.mark.slow
def test_killed_run_resumes_and_score_matches(suite_run, capsys):
    root, env = suite_run["root"], suite_run["env"]
    out = root / "out"
    path = out / "sharegpt_video.judgements.jsonl"
    full = read_lines(str(path))
    data = path.read_bytes()
    cut = data.index(b"\n", data.index(b"\n") + 1) + 40  # two complete lines and part of a third
    path.write_bytes(data[:cut])
    argv = ["eval", "sharegpt_video", env["hf_dir"], "--tokenizer", env["tok_path"], "--dtype", "float32",
            "--data", str(root / "video.jsonl"), "--media-root", str(root / "media"), "--judgements", str(path),
            "--seed", "3", "--batch-size", "4", "--max-new-tokens", "12"]
    assert cli.main(argv) == 0
    again = read_lines(str(path))
    assert len(again) == len(full) and path.read_bytes().endswith(b"\n")
    assert sorted((ln["index"], ln["order"]) for ln in again) == sorted((ln["index"], ln["order"]) for ln in full)
    # greedy: the re-judged rows give the same texts
    assert {(ln["index"], ln["order"]): ln["output"] for ln in again} == \
        {(ln["index"], ln["order"]): ln["output"] for ln in full}
    capsys.readouterr()
    # re-scoring without the model reproduces the suite's numbers
    for name, spec in suite_run["benches"].items():
        report = out / f"{name}.rescore.json"
        assert cli.main(["eval", "score", name, "--data", str(root / spec["data"]), "--media-root",
                         str(root / "media"), "--judgements", str(out / f"{name}.judgements.jsonl"),
                         "--json", str(report)]) == 0
        mine = json.loads(report.read_text())
        suite = json.loads((out / f"{name}.json").read_text())
        assert mine["reference"] == suite["reference"] and mine["omnirrm"] == suite["omnirrm"], name
    # judgements of another data file are refused, not mixed in
    capsys.readouterr()
    code = cli.main(["eval", "score", "sharegpt_video", "--data", str(root / "hh.jsonl"), "--judgements", str(path)])
    assert code == 2 and "error" in capsys.readouterr().err
