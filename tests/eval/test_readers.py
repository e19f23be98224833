"""Benchmark readers on the released files as published: the real excerpts in shared/benchmarks (row counts, labels,
Multimodal RewardBench categories, the ShareGPT-Video placeholder fallback), small parquet files for VL-RewardBench
and TA2T (embedded PNG bytes, path-only images, the ranking rule of the reference's eval.py, ties), and bad rows /
bad files (an error record naming file, line and field, keeping a readable gold label; BenchmarkFileError for a
whole-file problem)."""
import collections
import io
import json
from pathlib import Path

import pytest

from omnirrm_jax.eval import readers as R
from omnirrm_jax.eval.benchmarks import BENCHMARKS

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"benchmark excerpts not present at {SHARED}")


def _jsonl(path: Path, lines: list) -> str:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return str(path)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict], schema=None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))
    return str(path)


def test_every_benchmark_has_a_reader():
    assert set(R.READERS) == set(BENCHMARKS)


# ---------------------------------------------------------------- the released excerpts

@needs_shared
def test_hh_rlhf_release():
    rows = R.read_benchmark("hh_rlhf", str(SHARED / "hh_rlhf_2000.jsonl"))
    assert len(rows) == 2000 and [r.index for r in rows] == list(range(2000))
    assert collections.Counter(r.label for r in rows) == {"A": 994, "B": 1006}
    assert all(r.error is None for r in rows)
    r = rows[0]
    assert r.line == 1 and r.question == r.fields["text_prompt"] and r.answer_a == r.fields["answer_a"]
    assert r.fields["label"] == 0  # the raw value is kept
    assert len(R.read_benchmark("hh_rlhf", str(SHARED / "hh_rlhf_2000.jsonl"), limit=5)) == 5


@needs_shared
def test_mm_rewardbench_release_categories():
    rows = R.read_benchmark("mm_rewardbench", str(SHARED / "mm_rewardbench_excerpt.json"))
    assert len(rows) == 120 and all(r.error is None and r.line is None for r in rows)
    cats = collections.Counter(r.category for r in rows)
    # every reasoning row of the excerpt is a MathVista one ("mathvista_..." starts with "math")
    assert cats == {"open_generation/preference_task": 60, "reasoning/math": 60}
    assert all(r.id.lower().startswith("math") for r in rows if r.category == "reasoning/math")
    assert all(r.question is None for r in rows)  # Text is null in the release: kept as None
    src = json.loads((SHARED / "mm_rewardbench_excerpt.json").read_text())
    for r, s in zip(rows, src):
        assert r.label == {"Output1": "A", "Output2": "B"}[s["Better"]]
        assert r.images == [s["Image"]] and r.answer_a == s["Output1"] and r.id == s["ID"]


def test_mm_rewardbench_category_breakdown(tmp_path):
    base = {"Text": "q", "Image": "i.jpg", "Output1": "a", "Output2": "b", "Better": "Output2"}
    data = [dict(base, Category=c, ID=i) for c, i in
            [("safety", "PAIRS_1"), ("safety", "tox_2"), ("reasoning", "Math_3"), ("reasoning", "code_4"),
             ("correctness", "x_5")]]
    data.append(dict(base, Category="correctness", ID="x_6", Better="neither"))
    p = tmp_path / "mm.json"
    p.write_text(json.dumps(data))
    rows = R.read_benchmark("mm_rewardbench", str(p))
    assert [r.category for r in rows] == ["safety/bias", "safety/toxicity", "reasoning/math", "reasoning/coding",
                                          "correctness", "correctness"]
    assert [r.label for r in rows] == ["B"] * 5 + [None]
    assert rows[0].question == "q"


def test_mm_rewardbench_null_and_absent_category(tmp_path):
    # infer_lora_multimodal.py writes ex.get("Category", "unknown"): absent -> "unknown"; null stays None and
    # eval.py prints its key as "None".
    base = {"Text": "q", "Image": "i.jpg", "Output1": "a", "Output2": "b", "Better": "Output1"}
    p = tmp_path / "mm.json"
    p.write_text(json.dumps([dict(base, ID="x_1", Category=None), dict(base, ID="x_2"),
                             dict(base, ID="x_3", Category="general")]))
    rows = R.read_benchmark("mm_rewardbench", str(p))
    assert [r.category for r in rows] == ["None", "unknown", "general"]
    assert all(r.error is None for r in rows) and rows[0].fields["Category"] is None


@needs_shared
def test_sharegpt_video_release_placeholder_fallback(tmp_path):
    path = str(SHARED / "sharegpt_video_msrvtt_200.jsonl")
    (tmp_path / "video1026.mp4").write_bytes(b"")
    rows = R.read_benchmark("sharegpt_video", path, media_root=str(tmp_path))
    assert len(rows) == 200 and all(r.label == "A" for r in rows)
    assert rows[0].id == "video1026_0" and rows[0].error is None and rows[0].videos == ["video1026.mp4"]
    assert rows[0].question == rows[0].fields["query"] and rows[0].fields["score_diff"] == 2.0
    missing = [r for r in rows if r.error]
    assert len(missing) == sum(1 for r in rows if not r.id.startswith("video1026_"))
    reason, detail = rows[1].error
    assert reason == "missing_file"
    assert f"{path} line 2" in detail and "video8436_2" in detail and "video8436.mp4" in detail
    assert "video8436.webm" in detail
    assert rows[1].label == "A" and rows[1].answer_a  # what was read stays on the error record
    # without a media root the placeholder is reported as such
    row = R.read_benchmark("sharegpt_video", path, limit=1)[0]
    assert row.error[0] == "placeholder_path" and "/path/to/resource" in row.error[1]


def test_sharegpt_video_keeps_an_existing_path(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mkv").write_bytes(b"")
    (tmp_path / "video7.avi").write_bytes(b"")
    row = {"query": "q", "answer_a": "a", "answer_b": "b", "score_diff": 1.0, "label": 1}
    p = _jsonl(tmp_path / "s.jsonl", [dict(row, id="x_0", video="clips/a.mkv"),
                                      dict(row, id="video7_3", video="gone.mp4")])
    a, b = R.read_benchmark("sharegpt_video", p, media_root=str(tmp_path))
    assert a.videos == ["clips/a.mkv"] and a.label == "B" and a.error is None
    assert b.videos == ["video7.avi"] and b.error is None
    assert R.read_benchmark("sharegpt_video", p)[1].videos == ["gone.mp4"]  # no media root: the runner resolves it


def test_audio_hh_rlhf(tmp_path):
    base = {"answer_a": "a", "answer_b": "b"}
    p = _jsonl(tmp_path / "audio.jsonl", [
        dict(base, audio_prompt="wav/0.wav", label=0),
        dict(base, audio_prompt="wav/1.wav", label="1", question="What is said?"),
        dict(base, audio_prompt="/path/to/resource", label=1),
    ])
    a, b, c = R.read_benchmark("audio_hh_rlhf", p)
    assert (a.audios, a.label, a.question, a.error) == (["wav/0.wav"], "A", None, None)
    assert (b.label, b.question, b.fields["label"]) == ("B", "What is said?", "1")
    assert c.error[0] == "placeholder_path" and f"{p} line 3" in c.error[1] and "real audio path" in c.error[1]
    assert c.audios == ["/path/to/resource"] and c.label == "B"


# ---------------------------------------------------------------- parquet releases

def test_vl_rewardbench_parquet(tmp_path):
    png = _png()
    base = {"query": "What is shown?", "models": ["m1", "m2"], "judge": "gpt", "rationale": "r", "query_source": "s"}
    p = _parquet(tmp_path / "vl.parquet", [
        dict(base, id="r0", response=["good", "bad"], human_ranking=[0, 1], image={"bytes": png, "path": "0.png"}),
        dict(base, id="r1", response=["bad", "good"], human_ranking=[1, 0], image={"bytes": None, "path": "im/1.png"}),
        dict(base, id="r2", response=["x", "y"], human_ranking=[0, 0], image={"bytes": png, "path": None}),
        dict(base, id="r3", response=["only one"], human_ranking=[1, 0], image={"bytes": png, "path": None}),
        dict(base, id="r4", response=["x", "y"], human_ranking=[3, 3], image={"bytes": png, "path": None}),
    ])
    rows = R.read_benchmark("vl_rewardbench", p)
    # eval.py: good = 0 if ranking[0] <= ranking[1] else 1 (smaller rank = better); a tie -> A
    assert [r.label for r in rows[:3]] == ["A", "B", "A"] and rows[4].label == "A"
    a, b, c, d, _ = rows
    assert a.embedded == {"images": [png]} and a.images == [] and a.question == "What is shown?"
    assert (a.answer_a, a.answer_b, a.id, a.line) == ("good", "bad", "r0", None)
    assert a.fields["image"] == {"path": "0.png", "bytes": f"<{len(png)} bytes>"}
    assert a.fields["models"] == ["m1", "m2"] and a.fields["human_ranking"] == [0, 1]
    assert a.fields["query_source"] == "s" and a.fields["judge"] == "gpt" and a.fields["rationale"] == "r"
    json.dumps([r.fields for r in rows])  # JSON-serialisable, bytes included
    assert b.images == ["im/1.png"] and b.embedded == {} and b.fields["image"]["bytes"] is None
    assert d.error[0] == "bad_field" and f"{p} row 3" in d.error[1] and "'response'" in d.error[1]
    assert d.id == "r3" and d.label == "B"  # an error row keeps its readable gold label
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert len(R.read_benchmark("vl_rewardbench", p, limit=2)) == 2


def test_ta2t_parquet_and_json(tmp_path):
    wav = b"RIFF0000WAVEfmt "
    base = {"prompt": "Which is better?", "response1": "r1", "response2": "r2", "model1": "m1", "model2": "m2",
            "criteria": "be brief", "audio_path": "audio/x.wav"}
    p = _parquet(tmp_path / "ta2t.parquet", [
        dict(base, id="0", audio={"bytes": wav, "path": "x.wav"}, criteria_preference="response1"),
        dict(base, id="1", audio={"bytes": None, "path": None}, criteria_preference="Response2"),
        dict(base, id="2", audio={"bytes": wav, "path": None}, criteria_preference="tie"),
        dict(base, id="3", audio={"bytes": wav, "path": None}, criteria_preference="both"),
    ])
    a, b, c, d = R.read_benchmark("ta2t", p)
    assert (a.label, b.label, c.label) == ("A", "B", "equal")
    assert a.embedded == {"audios": [wav]} and a.audios == [] and a.question == "Which is better?"
    assert a.fields["criteria"] == "be brief" and a.fields["audio"] == {"path": "x.wav", "bytes": f"<{len(wav)} bytes>"}
    assert b.audios == ["audio/x.wav"] and b.embedded == {}  # no bytes: the audio_path column
    assert d.error[0] == "bad_field" and "'both'" in d.error[1] and f"{p} row 3" in d.error[1]
    json.dumps([r.fields for r in (a, b, c, d)])
    # the same split as a JSON list and as JSONL: paths under the media root
    js = tmp_path / "ta2t.json"
    js.write_text(json.dumps([dict(base, id="0", criteria_preference="A"),
                              dict(base, id="1", audio="clips/1.wav", criteria_preference="equal")]))
    e, f = R.read_benchmark("ta2t", str(js))
    assert (e.audios, e.label, f.audios, f.label) == (["audio/x.wav"], "A", ["clips/1.wav"], "equal")
    jl = _jsonl(tmp_path / "ta2t.jsonl", [dict(base, id="0", criteria_preference="response2")])
    (g,) = R.read_benchmark("ta2t", jl)
    assert (g.label, g.line, g.audios) == ("B", 1, ["audio/x.wav"])


# ---------------------------------------------------------------- bad rows and bad files

def test_bad_rows_become_error_records(tmp_path):
    good = {"text_prompt": "q", "answer_a": "a", "answer_b": "b", "label": 0}
    p = _jsonl(tmp_path / "hh.jsonl", [
        good,
        '{"text_prompt": "q", "answer_a": ',  # line 2: malformed
        "",  # line 3: blank, skipped
        {k: v for k, v in good.items() if k != "answer_b"},  # line 4: missing key
        dict(good, answer_a=["not", "a", "string"]),  # line 5: wrong type
        dict(good, label=7),  # line 6
        dict(good, label=None),  # line 7
        "[1, 2]",  # line 8: JSON but not an object
        dict(good, label="1", index=5, output="x"),  # line 9: reserved keys renamed
    ])
    rows = R.read_benchmark("hh_rlhf", p)
    assert [r.index for r in rows] == list(range(8)) and [r.line for r in rows] == [1, 2, 4, 5, 6, 7, 8, 9]
    assert rows[0].error is None
    expect = [("malformed_json", None), ("missing_field", "'answer_b'"), ("bad_field", "'answer_a'"),
              ("bad_field", "'label'"), ("missing_field", "'label'"), ("malformed_json", "JSON object")]
    labels = [None, "A", "A", None, None, None]  # a readable label stays on the error row (counted, as wrong)
    for row, (reason, needle), label in zip(rows[1:7], expect, labels):
        assert row.error[0] == reason and f"{p} line {row.line}" in row.error[1], row.error
        assert needle is None or needle in row.error[1], row.error
        assert row.label == label, row
    assert "7" in rows[4].error[1] and rows[4].fields["label"] == 7
    last = rows[7]
    assert last.error is None and last.label == "B"
    assert last.fields["row_index"] == 5 and last.fields["row_output"] == "x" and "index" not in last.fields


def test_error_rows_keep_a_readable_label(tmp_path):
    """Every reader reads the gold label first: a row that fails on another field keeps it (it stays in the
    accuracy's population, counted wrong); only a missing or unreadable label gives None."""
    hh = {"text_prompt": "q", "answer_a": "a", "answer_b": "b"}
    p = _jsonl(tmp_path / "hh.jsonl", [dict(hh, label=1, answer_b=None), dict(hh, label="x", answer_b=None),
                                       {"text_prompt": "q", "answer_a": "a"}])
    a, b, c = R.read_benchmark("hh_rlhf", p)
    assert (a.error[0], a.label) == ("missing_field", "B") and "'answer_b'" in a.error[1]
    assert (b.error[0], b.label) == ("bad_field", None) and "'label'" in b.error[1]  # the label error is reported
    assert (c.error[0], c.label) == ("missing_field", None)
    p = _jsonl(tmp_path / "audio.jsonl", [dict(hh, label=1), dict(hh, label=0, audio_prompt=3)])
    assert [(r.error[0], r.label) for r in R.read_benchmark("audio_hh_rlhf", p)] == [("missing_field", "B"),
                                                                                     ("bad_field", "A")]
    p = _jsonl(tmp_path / "sg.jsonl", [{"id": "v_0", "video": "v.mp4", "query": "q", "answer_a": "a", "label": 1}])
    (row,) = R.read_benchmark("sharegpt_video", p)
    assert (row.error[0], row.label, row.id) == ("missing_field", "B", "v_0")
    mm = tmp_path / "mm.json"
    mm.write_text(json.dumps([{"ID": "m_1", "Category": "c", "Image": "i.png", "Output1": "a", "Better": "Output2"}]))
    (row,) = R.read_benchmark("mm_rewardbench", str(mm))
    assert (row.error[0], row.label) == ("missing_field", "B")
    base = {"query": "q", "response": ["a", "b"]}
    vl = _parquet(tmp_path / "vl.parquet", [dict(base, id="r0", human_ranking=[1, 0], image=None),
                                            dict(base, id="r1", human_ranking=None, image=None)])
    r0, r1 = R.read_benchmark("vl_rewardbench", vl)
    assert (r0.error[0], r0.label) == ("missing_field", "B") and "'image'" in r0.error[1]
    assert (r1.error[0], r1.label) == ("missing_field", None) and "'human_ranking'" in r1.error[1]
    ta = tmp_path / "ta2t.json"
    ta.write_text(json.dumps([{"id": "0", "prompt": "p", "response1": "a", "response2": "b",
                               "criteria_preference": "tie"}]))
    (row,) = R.read_benchmark("ta2t", str(ta))
    assert (row.error[0], row.label) == ("missing_field", "equal") and "audio" in row.error[1]


def test_bad_rows_in_a_json_list(tmp_path):
    p = tmp_path / "mm.json"
    p.write_text(json.dumps([{"Category": "reasoning", "ID": "math_1", "Text": None, "Image": "i.png",
                              "Output1": "a", "Better": "Output1"}, "not an object"]))
    a, b = R.read_benchmark("mm_rewardbench", str(p))
    assert a.error[0] == "missing_field" and f"{p} row 0" in a.error[1] and "'Output2'" in a.error[1]
    assert a.id == "math_1"
    assert b.error[0] == "malformed_json" and f"{p} row 1" in b.error[1]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_missing_file(tmp_path, name):
    with pytest.raises(R.BenchmarkFileError, match="nope"):
        R.read_benchmark(name, str(tmp_path / "nope.jsonl"))


def test_whole_file_problems(tmp_path):
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"Category": "x"}))
    with pytest.raises(R.BenchmarkFileError, match="obj.json.*JSON list"):
        R.read_benchmark("mm_rewardbench", str(obj))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(R.BenchmarkFileError, match="broken.json"):
        R.read_benchmark("mm_rewardbench", str(broken))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(R.BenchmarkFileError, match="empty.jsonl: no rows"):
        R.read_benchmark("hh_rlhf", str(empty))
    with pytest.raises(R.BenchmarkFileError, match="no rows"):
        R.read_benchmark("mm_rewardbench", str(_write(tmp_path / "e.json", "[]")))
    with pytest.raises(R.BenchmarkFileError, match="fake.parquet.*parquet"):
        R.read_benchmark("vl_rewardbench", str(_write(tmp_path / "fake.parquet", "not parquet")))
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("query", pa.string())])
    with pytest.raises(R.BenchmarkFileError, match="no rows"):
        R.read_benchmark("vl_rewardbench", _parquet(tmp_path / "none.parquet", [], schema))
    with pytest.raises(KeyError, match="unknown benchmark"):
        R.read_benchmark("nope", str(empty))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
