"""Record format and ``omnirrm prep``: exact round trips, stored frames that rebuild the reference patches bit for
bit, every fault quarantined with its reason while the rest of the shard is written, resume, worker-count
independence, the bad-ratio stop, and the TFDS builder yielding the same record bytes.

All media are generated here (PIL images, PyAV mp4s, stdlib-``wave`` / hand-written float WAVs)."""
import dataclasses
import json
import os
import shutil
import struct
import wave
import zlib

import numpy as np
import pytest

from data_prep import prep as P
from data_prep import rows as W
from omnirrm_jax import cli
from omnirrm_jax.data import media as M
from omnirrm_jax.data import records as R

av = pytest.importorskip("av")
from PIL import Image  # noqa: E402

RNG = np.random.default_rng(0)
# small video frames keep the test fast; images use the reference SFT settings
CFG = M.MediaConfig(video=M.VideoConfig(min_pixels=8 * 28 * 28, max_pixels=16 * 28 * 28, fps=2.0, fps_max_frames=6))


def _mp4(path, frames=12, fps=6, w=64, h=48, audio=False):
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if audio:
            ast = c.add_stream("aac", rate=16000)
            ast.layout = "mono"
        for i in range(frames):
            img = np.full((h, w, 3), 40, np.uint8)
            img[8:20, (i * 4) % (w - 12):(i * 4) % (w - 12) + 12] = (240, 30, 30)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
        if audio:
            s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(frames / fps * 16000)) / 16000)).astype(np.float32)
            for k in range(0, len(s), 1024):
                fr = av.AudioFrame.from_ndarray(s[None, k:k + 1024].copy(), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, k
                c.mux(ast.encode(fr))
            c.mux(ast.encode())


def _wav(path, samples, sr=16000):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(sr)
        f.writeframes((np.asarray(samples) * 32767).astype("<i2").tobytes())


def _float_wav(path, samples, sr=16000):
    """IEEE-float WAV by hand (the stdlib wave module writes PCM only, which cannot hold NaN)."""
    data, fmt = np.asarray(samples, "<f4").tobytes(), struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _png_header_only(path, width, height):
    chunk = lambda kind, d: len(d).to_bytes(4, "big") + kind + d + zlib.crc32(kind + d).to_bytes(4, "big")  # noqa
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    d = base / "media"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(d / "img.png")
    Image.fromarray(RNG.integers(0, 256, (90, 40, 3), dtype=np.uint8)).save(d / "sub" / "tall.jpg")
    _mp4(d / "clip.mp4")
    _mp4(d / "clip_av.mp4", frames=9, audio=True)
    _wav(d / "tone.wav", 0.3 * np.sin(np.arange(8000) / 5))
    data = (d / "clip.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "corrupt.mp4").write_bytes(RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    _wav(d / "empty.wav", [])
    _float_wav(d / "nan.wav", [0.1, np.nan, 0.2] * 200)
    (d / "junk.png").write_bytes(b"definitely not a png" * 20)
    _png_header_only(d / "huge.png", 100_000, 100_000)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(base / "outside.png")
    os.symlink(base / "outside.png", d / "link.png")
    return d


def _row(kind, path, **kw):
    tag = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}[kind]
    return {"messages": [{"role": "user", "content": f"{tag}Which answer is better?"},
                         {"role": "assistant", "content": "{\"better\": \"A\"}"}], kind: [path], **kw}


GOOD = [  # (row, modality)
    ({"id": "t1", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q? A: x B: y"}],
      "better": "A", "score_A": 8, "score_B": "3", "cmp_gt": 0.5, "dataset": "hh"}, "text"),
    (_row("images", "img.png", id="i1", solution=json.dumps({"better": "B", "score_A": 2, "score_B": 9})), "image"),
    (_row("images", "sub/tall.jpg", id="i2"), "image"),
    (_row("videos", "clip.mp4", id="v1"), "video"),
    (_row("audios", "tone.wav", id="a1", solution={"better": "equal", "score_A": 5, "score_B": 5}), "audio"),
    ({"id": "m1", "messages": [{"role": "user", "content": "<image><audio>both"}], "images": "img.png",
      "audios": ["tone.wav"]}, "mixed"),
]
BAD = [  # (row or raw line, reason)
    (_row("videos", "truncated.mp4"), "video_undecodable"),
    (_row("videos", "corrupt.mp4"), "video_undecodable"),
    (_row("audios", "empty.wav"), "audio_empty"),
    (_row("audios", "nan.wav"), "audio_non_finite"),
    (_row("images", "nowhere.png"), "missing_file"),
    (_row("images", "../outside.png"), "path_escape"),
    (_row("images", "link.png"), "path_escape"),
    (_row("images", "/etc/hostname"), "path_escape"),
    (_row("images", "junk.png"), "image_undecodable"),
    (_row("images", "huge.png"), "image_too_large"),
    (b'{"messages": [{"role": "user", "content": "cut', "malformed_json"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "non_utf8"),
    ({"messages": [{"role": "user", "content": "<image><image>"}], "images": ["img.png"]}, "tag_mismatch"),
    ({"messages": [{"role": "user", "content": "q"}], "solution": "not json"}, "bad_gold"),
    ({"messages": [{"role": "user", "content": "q"}], "better": "C", "score_A": 1, "score_B": 2}, "bad_gold"),
    ({"messages": "hello"}, "bad_row"),
]


def _write_jsonl(path, rows):
    with open(path, "wb") as f:
        for r in rows:
            f.write((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n")


@pytest.fixture(scope="module")
def mixed_jsonl(root):
    """Good and bad rows interleaved (plus a blank line), so every shard holds some of each."""
    rows, expect = [], []
    for i in range(max(len(GOOD), len(BAD))):
        for lst, ok in ((GOOD, True), (BAD, False)):
            if i < len(lst):
                rows.append(lst[i][0])
                expect.append((ok, lst[i][1]))
    path = root.parent / "rows.jsonl"
    _write_jsonl(path, rows[:5] + [b"   "] + rows[5:])
    return path, expect


def _read_shards(out, split="train"):
    from array_record.python.array_record_module import ArrayRecordReader
    files = sorted(p for p in os.listdir(out) if p.startswith(split) and p.endswith(".array_record"))
    recs = []
    for f in files:
        r = ArrayRecordReader(str(out / f))
        recs += r.read_all()
        r.close()
    return files, recs


def _prep(jsonl, root, out, **kw):
    kw = {"media_cfg": CFG, "records_per_shard": 8, "max_bad_ratio": 1.0, **kw}
    return P.prep([str(jsonl)], str(root), str(out), **kw)


@pytest.fixture(scope="module")
def serial_run(root, mixed_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("out0")
    return out, _prep(mixed_jsonl[0], root, out, num_workers=0)


# ---------------------------------------------------------------- records

def _synthetic(kind, aiv=False):
    frames = lambda t, h, w: RNG.integers(0, 256, (t, h * 14, w * 14, 3), dtype=np.uint8)  # noqa: E731
    audio = lambda n: {"features": RNG.standard_normal((128, n)).astype(np.float32), "length": n}  # noqa: E731
    rec = {"id": f"r-{kind}", "modality": kind, "messages": [{"role": "user", "content": "é ✓ <image>"}],
           "gold": {"better": "A", "score_A": 7, "score_B": 2.5}, "solution": None, "cmp_gt": 0.25,
           "source": {"file": "x/y.jsonl", "line": 3}, "use_audio_in_video": aiv, "extra": {"k": [1, {"z": None}]},
           "media_paths": {"images": [], "videos": [], "audios": []}, "images": [], "videos": [], "audios": []}
    if kind in ("image", "mixed"):
        rec["images"] = [{"frames": frames(1, 4, 6), "grid_thw": np.array([1, 4, 6])}] * 2
        rec["media_paths"]["images"] = ["a.png", "b.png"]
    if kind in ("video", "mixed"):
        rec["videos"] = [{"frames": frames(4, 2, 4), "grid_thw": np.array([2, 2, 4]), "second_per_grid": 1.0,
                          "frame_times": np.arange(4) / 3, "audio": audio(17) if aiv else None}]
        rec["media_paths"]["videos"] = ["v.mp4"]
    if kind in ("audio", "mixed"):
        rec["audios"] = [audio(5)]
        rec["media_paths"]["audios"] = ["a.wav"]
    return rec


def _same(a, b):
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) is None for k in a)
    elif isinstance(a, list):
        assert len(a) == len(b) and all(_same(x, y) is None for x, y in zip(a, b))
    else:
        assert a == b


@pytest.mark.parametrize("kind,aiv", [("text", False), ("image", False), ("video", False), ("video", True),
                                      ("audio", False), ("mixed", True)])
def test_record_round_trip(kind, aiv):
    rec = _synthetic(kind, aiv)
    data = R.encode_record(rec)
    back = R.decode_record(data)
    _same(dict(rec, version=R.VERSION), back)
    assert R.encode_record(back) == data


def test_decode_rejects_bad_bytes_naming_the_field():
    data = R.encode_record(_synthetic("mixed", True))
    for cut in (0, 10, 40, len(data) - 1):
        with pytest.raises(R.RecordError, match="truncated"):
            R.decode_record(data[:cut])
    with pytest.raises(R.RecordError, match="^magic"):
        R.decode_record(b"X" + data[1:])
    with pytest.raises(R.RecordError, match="^version: unknown schema version 2"):
        R.decode_record(data[:8] + (2).to_bytes(2, "little") + data[10:])
    with pytest.raises(R.RecordError, match="crc32"):
        R.decode_record(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(R.RecordError, match="trailing bytes"):
        R.decode_record(data + b"\0" * 16)
    bad = _synthetic("video")
    bad["videos"][0]["frames"] = bad["videos"][0]["frames"][:3]
    with pytest.raises(R.RecordError, match=r"^videos\[0\]\.frames: shape \(3, 28, 56, 3\) does not match"):
        R.encode_record(bad)
    bad = _synthetic("audio")
    bad["audios"][0]["length"] = 6
    with pytest.raises(R.RecordError, match=r"^audios\[0\]\.features: shape"):
        R.encode_record(bad)
    with pytest.raises(R.RecordError, match="^gold.better"):
        R.encode_record(dict(_synthetic("text"), gold={"better": "C", "score_A": 1, "score_B": 1}))
    with pytest.raises(R.RecordError, match="^meta: text fields"):
        R.encode_record(dict(_synthetic("text"), messages=[{"role": "user", "content": "\ud800"}]))


def test_stored_frames_rebuild_reference_patches_exactly(root):
    want_pv, want_grid = M.process_image(root / "img.png", CFG.image)
    pv, grid = R.image_patches(dict(zip(("frames", "grid_thw"), R.image_frames(root / "img.png", CFG.image))))
    assert pv.dtype == np.float32 and np.array_equal(pv, want_pv) and np.array_equal(grid, want_grid)
    for name, cfg in (("clip.mp4", CFG.video), ("clip_av.mp4", M.VideoConfig(fps=3.0))):  # 2nd: odd frame count
        want = M.video_to_patches(root / name, cfg)
        frames, grid, spg, times = R.video_frames(root / name, cfg)
        pv, grid2, spg2 = R.video_patches({"frames": frames, "grid_thw": grid, "second_per_grid": spg})
        assert np.array_equal(pv, want[0]) and np.array_equal(grid2, want[1]) and spg2 == want[2]
        assert np.array_equal(times, want[3]) and frames.nbytes * 4 == want[0].nbytes


# ---------------------------------------------------------------- prep

def test_faults_are_quarantined_and_the_rest_written(serial_run, mixed_jsonl):
    out, summary = serial_run
    _, expect = mixed_jsonl
    files, blobs = _read_shards(out)
    assert files == [f"train-0000{i}-of-00003.array_record" for i in range(3)]
    recs = [R.decode_record(b) for b in blobs]
    assert [r["id"] for r in recs] == [g[0]["id"] for g in GOOD]
    assert [r["modality"] for r in recs] == [m for _, m in GOOD]
    by_id = {r["id"]: r for r in recs}
    assert by_id["t1"]["gold"] == {"better": "A", "score_A": 8, "score_B": 3} and by_id["t1"]["extra"] == {
        "dataset": "hh"} and by_id["t1"]["cmp_gt"] == 0.5
    assert by_id["i1"]["gold"]["better"] == "B" and by_id["a1"]["gold"]["better"] == "equal"
    assert by_id["i2"]["gold"] is None and by_id["i2"]["source"] == {"file": "rows.jsonl", "line": 5}
    assert by_id["v1"]["videos"][0]["frames"].shape[0] % 2 == 0 and by_id["m1"]["audios"][0]["length"] == 50
    q = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in q] == [r for ok, r in expect if not ok]
    lines = [i + 1 + (i >= 5) for i, (ok, _) in enumerate(expect) if not ok]  # line 6 is blank
    assert [e["line"] for e in q] == lines and all(e["source"] == "rows.jsonl" for e in q)
    assert q[4]["media"] == "nowhere.png" and q[4]["id"] == "rows.jsonl:11" and "file not found" in q[4]["detail"]
    assert {e["shard"] for e in q} == {0, 1, 2}
    assert summary["records"] == len(GOOD) and summary["quarantined"] == len(BAD)
    assert summary["rows"] == summary["rows_done"] == len(GOOD) + len(BAD)
    assert summary["by_modality"] == {"audio": 1, "image": 2, "mixed": 1, "text": 1, "video": 1}
    assert summary["quarantine_by_reason"] == {"audio_empty": 1, "audio_non_finite": 1, "bad_gold": 2, "bad_row": 1,
                                               "image_too_large": 1, "image_undecodable": 1, "malformed_json": 1,
                                               "missing_file": 1, "non_utf8": 1, "path_escape": 3,
                                               "tag_mismatch": 1, "video_undecodable": 2}
    assert summary["shards"] == 3 and summary["shards_written"] == 3 and summary["finished"]
    assert json.loads((out / "summary.json").read_text())["splits"]["train"] == summary


@dataclasses.dataclass(frozen=True)
class ShortAudio(M.MediaConfig):
    """MediaConfig with second-scale audio limits (the defaults, 300 s kept and 600 s decoded, need long files)."""

    audio_max_seconds: int = 2
    audio_max_input_seconds: float = 6.0


def test_long_audio_is_refused_unread_and_cut_audio_is_reported(tmp_path, monkeypatch, capsys):
    """Audio longer than audio_max_input_seconds is quarantined from its header, never decoded (a one-hour WAV took
    2.3 GB); audio longer than audio_max_seconds is kept, cut as the processor cuts it, and counted."""
    import librosa

    media = tmp_path / "media"
    media.mkdir()
    for name, seconds in (("short.wav", 1), ("four.wav", 4), ("long.wav", 9)):
        _wav(media / name, 0.3 * np.sin(np.arange(seconds * 16000) / 5))
    jsonl = tmp_path / "rows.jsonl"
    _write_jsonl(jsonl, [_row("audios", n, id=n[:-4]) for n in ("short.wav", "four.wav", "long.wav")])
    decoded, load = [], librosa.load
    monkeypatch.setattr(librosa, "load", lambda path, **kw: decoded.append(os.path.basename(path)) or load(path, **kw))
    summary = _prep(jsonl, media, tmp_path / "out", media_cfg=ShortAudio())
    assert decoded == ["short.wav", "four.wav"]
    assert summary["records"] == 2 and summary["quarantine_by_reason"] == {"audio_too_large": 1}
    q = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text())
    assert q["media"] == "long.wav" and "9 s of audio exceeds the decode budget of 6 s" in q["detail"]
    assert summary["notes_by_reason"] == {"audio_truncated": 1}
    notes = [json.loads(line) for line in (tmp_path / "out" / "notes.jsonl").read_text().splitlines()]
    assert [(n["id"], n["media"], n["reason"], n["line"]) for n in notes] == [("four", "four.wav", "audio_truncated", 2)]
    assert "4.0 s of audio cut to its first 2 s" in notes[0]["detail"]
    # `omnirrm prep` says so on stderr, besides the summary
    monkeypatch.setattr(M, "MediaConfig", ShortAudio)
    assert cli.main(["prep", "--jsonl", str(jsonl), "--media-root", str(media), "--out", str(tmp_path / "o2"),
                     "--workers", "0", "--max-bad-ratio", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "omnirrm prep: note: 1 audio clip(s) longer than 2 s were cut to their first 2 s" in err


def test_audio_without_a_readable_header_decodes_no_more_than_the_budget(tmp_path, monkeypatch):
    import librosa

    _wav(tmp_path / "four.wav", 0.3 * np.sin(np.arange(4 * 16000) / 5))
    monkeypatch.setattr(M, "audio_seconds", lambda path: None)  # as for a format whose header holds no length
    durations, load = [], librosa.load
    monkeypatch.setattr(librosa, "load", lambda path, **kw: durations.append(kw["duration"]) or load(path, **kw))
    with pytest.raises(M.MediaError, match="exceeds the decode budget of 2 s"):
        M.load_audio(str(tmp_path / "four.wav"), max_seconds=2.0)
    assert durations == [3.0]
    assert M.load_audio(str(tmp_path / "four.wav"), max_seconds=5.0).size == 4 * 16000


def test_workers_give_byte_identical_output(serial_run, mixed_jsonl, root, tmp_path):
    out0, _ = serial_run
    for n in (1, 2):
        out = tmp_path / f"w{n}"
        _prep(mixed_jsonl[0], root, out, num_workers=n)
        files, _ = _read_shards(out)
        for f in files + ["quarantine.jsonl"]:
            assert (out / f).read_bytes() == (out0 / f).read_bytes(), (n, f)


def test_resume_skips_finished_shards_and_redoes_partial_ones(serial_run, mixed_jsonl, root, tmp_path, monkeypatch):
    out0, _ = serial_run
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    files, _ = _read_shards(out)
    (out / files[1]).unlink()  # as if killed before the rename
    (out / (files[1] + ".tmp")).write_bytes(b"half a shard")
    (out / ".prep" / "train-00002.json").unlink()  # shard file without stats: not trusted
    mtime0 = (out / files[0]).stat().st_mtime_ns
    s = _prep(mixed_jsonl[0], root, out)
    assert (s["shards_skipped"], s["shards_written"]) == (1, 2) and (out / files[0]).stat().st_mtime_ns == mtime0
    assert not (out / (files[1] + ".tmp")).exists()
    for f in files + ["quarantine.jsonl"]:
        assert (out / f).read_bytes() == (out0 / f).read_bytes()
    assert {k: v for k, v in s.items() if "second" not in k and "shard" not in k} == {
        k: v for k, v in serial_run[1].items() if "second" not in k and "shard" not in k}
    # a real interruption: stop mid-shard 1 (its .tmp is half written), then resume
    out2, calls = tmp_path / "out2", []
    real = R.encode_record
    monkeypatch.setattr(R, "encode_record", lambda rec: calls.append(1) or (real(rec) if len(calls) < 6 else (
        _ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):
        _prep(mixed_jsonl[0], root, out2)
    assert (out2 / files[0]).exists() and not (out2 / files[1]).exists() and (out2 / (files[1] + ".tmp")).exists()
    monkeypatch.setattr(R, "encode_record", real)
    assert _prep(mixed_jsonl[0], root, out2)["shards_skipped"] == 1
    assert [(out2 / f).read_bytes() for f in files] == [(out0 / f).read_bytes() for f in files]
    with pytest.raises(P.PrepError, match="other media"):
        _prep(mixed_jsonl[0], root, out2, media_cfg=M.MediaConfig())


def test_audio_in_video(root, tmp_path):
    jsonl = tmp_path / "aiv.jsonl"
    _write_jsonl(jsonl, [_row("videos", "clip_av.mp4", id="av"), _row("videos", "clip.mp4", id="silent")])
    s = _prep(jsonl, root, tmp_path / "o", use_audio_in_video=True)
    assert s["records"] == 1 and s["quarantine_by_reason"] == {"no_audio_track": 1}
    (rec,) = [R.decode_record(b) for b in _read_shards(tmp_path / "o")[1]]
    want, n = M.whisper_features(M.extract_audio_track(root / "clip_av.mp4"))
    assert rec["use_audio_in_video"] and rec["videos"][0]["audio"]["length"] == n
    assert np.array_equal(rec["videos"][0]["audio"]["features"], want)


def test_path_resolution(root):
    opts = W.RowOptions(str(root), path_rewrites=(("/data/rlaif-v-dataset/", "sub/"),))
    assert W.resolve_media_path("img.png", opts) == os.path.realpath(root / "img.png")
    assert W.resolve_media_path(str(root / "sub" / "tall.jpg"), opts) == os.path.realpath(root / "sub/tall.jpg")
    assert W.resolve_media_path("/data/rlaif-v-dataset/tall.jpg", opts).endswith("sub/tall.jpg")
    assert W.resolve_media_path("sub/../img.png", opts).endswith("img.png")
    for raw, reason in [("../outside.png", "path_escape"), ("sub/../../outside.png", "path_escape"),
                        ("/etc/passwd", "path_escape"), ("link.png", "path_escape"), (str(root) + "x/a.png",
                        "path_escape"), ("http://x.org/a.png", "remote_media"), ("", "bad_row"),
                        ("sub", "missing_file"), ("nope.png", "missing_file")]:
        with pytest.raises(W.Quarantine) as e:
            W.resolve_media_path(raw, opts)
        assert e.value.reason == reason, raw


def test_tags_in_the_judgement_are_text_not_media(root):
    """The final assistant message (the SFT target) is data: its "<image>" is not counted against the images; the
    user message's tags still are."""
    row = _row("images", "img.png")
    row["messages"][1]["content"] = '{"better": "A", "reasoning": "A keeps the <image> tag"}'
    data, modality = W.build_record(json.dumps(row).encode(), "t", 1, W.RowOptions(str(root)), [])
    assert modality == "image" and R.decode_record(data)["messages"] == row["messages"]
    row["messages"][0]["content"] += "<image>"
    with pytest.raises(W.Quarantine, match="2 <image> tags but 1 images"):
        W.build_record(json.dumps(row).encode(), "t", 1, W.RowOptions(str(root)), [])


def test_null_fields_are_absent_fields(root):
    """JSON null is no value: null gold fields mean no gold (an SFT row), and a null modality is inferred from the
    media as a missing key is."""
    opts, row = W.RowOptions(str(root)), _row("images", "img.png")
    nulls = {"better": None, "score_A": None, "score_B": None, "solution": None, "modality": None}
    assert R.decode_record(W.build_record(json.dumps({**row, **nulls}).encode(), "t", 1, opts, [])[0])["gold"] is None
    mixed = {**GOOD[-1][0], "modality": None}
    assert W.build_record(json.dumps(mixed).encode(), "t", 1, opts, [])[1] == "mixed"


def test_bad_ratio_stops_prep(root, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    _write_jsonl(jsonl, [_row("images", f"missing{i}.png") for i in range(120)])
    with pytest.raises(P.PrepError, match=r"100 of 100 rows quarantined \(100.0%\) > max_bad_ratio 50.0% \(top "
                                          r"reasons: missing_file=100\)"):
        _prep(jsonl, root, tmp_path / "o", records_per_shard=50, max_bad_ratio=0.5)
    files, _ = _read_shards(tmp_path / "o")
    assert files == ["train-00000-of-00003.array_record", "train-00001-of-00003.array_record"]
    assert not json.loads((tmp_path / "o" / "summary.json").read_text())["splits"]["train"]["finished"]
    _write_jsonl(jsonl, [GOOD[0][0]] * 7 + [b"{"] * 3)  # 30% bad: only the final check can see it
    with pytest.raises(P.PrepError, match="3 of 10 rows"):
        _prep(jsonl, root, tmp_path / "o2", max_bad_ratio=0.2)
    assert cli.main(["prep", "--jsonl", str(jsonl), "--media-root", str(root), "--out", str(tmp_path / "o3"), "--workers",
                   "0", "--max-bad-ratio", "0.2"]) == 2
    assert cli.main(["prep", "--jsonl", str(jsonl), "--media-root", str(root), "--out", str(tmp_path / "o4"), "--workers",
                   "0", "--max-bad-ratio", "0.5", "--rewrite", "/data/="]) == 0


def crash_on_line_3(item, opts=None):
    """Module-level so spawned workers can import it: a decoder segfault stand-in."""
    if item[1] == 3:
        os._exit(1)
    return W.process_row(item, opts)


def test_worker_crash_is_quarantined(root):
    items = [("x.jsonl", i, json.dumps(GOOD[0][0]).encode()) for i in range(1, 7)]
    got = list(W.map_rows(items, W.RowOptions(str(root)), 2, fn=crash_on_line_3))
    assert [it[1] for it, _ in got] == [1, 2, 3, 4, 5, 6]
    assert [res[2]["reason"] if res[2] else res[1] for _, res in got] == ["text"] * 2 + ["worker_crash"] + ["text"] * 3


def test_tfds_builder_yields_the_same_records(serial_run, mixed_jsonl, root, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from data_prep import tfds_omni_preference as T
    manual = tmp_path / "manual"
    shutil.copytree(root, manual, symlinks=True)
    shutil.copy(mixed_jsonl[0], manual / "rows.jsonl")
    cfg = T.OmniPreferenceConfig(name="test", media=CFG, max_bad_ratio=1.0)
    b = T.OmniPreference(config=cfg, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    # a reader needs no builder code: the dataset folder describes itself (as in a bucket)
    src = tfds.builder_from_directory(b.data_dir).as_data_source(split="train")
    got = sorted(src[i]["record"] for i in range(len(src)))
    named = tfds.data_source("omni_preference", data_dir=str(tmp_path / "tfds"), split="train",
                             builder_kwargs={"config": cfg})
    assert got == sorted(named[i]["record"] for i in range(len(named)))
    _, want = _read_shards(serial_run[0])
    assert got == sorted(want) and {R.decode_record(g)["id"] for g in got} == {g[0]["id"] for g in GOOD}
