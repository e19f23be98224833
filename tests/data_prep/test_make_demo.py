"""The demo set: deterministic, in the reference ms-swift form, balanced, decodable, and its labels live in the media."""
import collections
import json
import re
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data_prep import make_demo as md
from omnirrm_jax import rubric

N_TRAIN, N_EVAL = 48, 48  # full label cycles: image 24, text 16, video and audio 4
TAGS = {"text": "", "image": "<image>", "video": "<video>\n", "audio": "<audio>"}


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = md.make_demo(out, n_train_per_modality=N_TRAIN, n_eval_per_modality=N_EVAL, seed=3)
    return out, info


def _items(out: Path, split: str):
    """(modality, sft row, rl row, gold dict, right answer, wrong answer) per item."""
    for sft, rl in zip(_rows(out / f"{split}.jsonl"), _rows(out / f"grpo_{split}.jsonl")):
        gold = json.loads(sft["messages"][1]["content"])
        a, b = re.search(r"A says (.+?) and B says (.+?);", gold["reasoning"]).groups()
        right, wrong = (a, b) if gold["better"] == "A" else (b, a)
        yield rubric.modality_of(sft), sft, rl, gold, right, wrong


def test_deterministic_bytes_and_eval_independent_of_train_size(demo, tmp_path):
    out, _ = demo
    md.make_demo(tmp_path / "again", n_train_per_modality=N_TRAIN, n_eval_per_modality=N_EVAL, seed=3)
    assert _tree(out) == _tree(tmp_path / "again")
    md.make_demo(tmp_path / "other", n_train_per_modality=4, n_eval_per_modality=N_EVAL, seed=3)
    assert (tmp_path / "other/eval.jsonl").read_bytes() == (out / "eval.jsonl").read_bytes()
    md.make_demo(tmp_path / "seed", n_train_per_modality=4, n_eval_per_modality=4, seed=4)
    assert (tmp_path / "seed/eval.jsonl").read_bytes() != (out / "eval.jsonl").read_bytes()


def test_counts_and_return_value(demo):
    out, info = demo
    assert info["counts"] == {s: dict.fromkeys(md.MODALITIES, N_TRAIN if s == "train" else N_EVAL) for s in md.SPLITS}
    assert info["media"] == dict.fromkeys(("images", "videos", "audios"), N_TRAIN + N_EVAL)
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        mods = [m for m, *_ in _items(out, split)]
        assert collections.Counter(mods) == dict.fromkeys(md.MODALITIES, n)
        assert mods[:4] == list(md.MODALITIES)  # interleaved
    for name in ("train", "eval", "grpo_train", "grpo_eval", "meta"):
        assert Path(info["files"][name]).is_file()
    assert len(list((out / "media/videos").glob("*.mp4"))) == N_TRAIN + N_EVAL


def test_balanced_so_a_media_blind_judge_scores_one_half(demo):
    out, _ = demo
    for split in md.SPLITS:
        by_pair = collections.Counter()
        positions = collections.Counter()
        for m, sft, _, gold, right, wrong in _items(out, split):
            positions[m, gold["better"]] += 1
            a, b = (right, wrong) if gold["better"] == "A" else (wrong, right)
            by_pair[m, a, b, gold["better"]] += 1  # text too: right and wrong sums are drawn symmetrically
        for m in md.MODALITIES:
            assert abs(positions[m, "A"] - positions[m, "B"]) <= 2, (split, m, positions)
        # Same (answer A, answer B) words -> as often A right as B right: any function of the text alone gets 0.5.
        for (m, a, b, better), count in by_pair.items():
            assert by_pair[m, a, b, "B" if better == "A" else "A"] == count


def test_reference_ms_swift_layout(demo):
    out, _ = demo
    for m, sft, rl, gold, right, wrong in _items(out, "train"):
        media_key = {"text": None, "image": "images", "video": "videos", "audio": "audios"}[m]
        assert set(sft) == {"messages"} | ({media_key} if media_key else set())
        assert [msg["role"] for msg in sft["messages"]] == ["user", "assistant"]
        user = sft["messages"][0]["content"]
        assert user.startswith(TAGS[m]) and user.count(TAGS[m].strip() or "\0") == (1 if media_key else 0)
        a, b = (right, wrong) if gold["better"] == "A" else (wrong, right)
        question = re.search(r"(What is \d \+ \d\?)", user).group(1) if m == "text" else md.QUESTIONS[m]
        prompt = rubric.judge_prompt(m, question, a, b)
        assert user == (TAGS[m] + prompt if m == "image" else rubric.user_content(m, prompt))
        if media_key:
            assert len(sft[media_key]) == 1 and not Path(sft[media_key][0]).is_absolute()
            assert (out / sft[media_key][0]).is_file()
        # RL row: the prompt only, the same media, gold as flat columns and as `solution`.
        assert list(rl) == ["messages"] + ([media_key] if media_key else []) + ["score_A", "score_B", "better",
                                                                                  "solution"]
        assert rl["messages"] == sft["messages"][:1] and rl.get(media_key) == sft.get(media_key)
        assert rl["solution"] == sft["messages"][1]["content"]
        assert rubric.gold_from_solution([rl["solution"]]) == {k: [rl[k]] for k in ("better", "score_A", "score_B")}


def test_answers_same_form_and_length(demo):
    out, _ = demo
    for m, sft, _, gold, right, wrong in _items(out, "eval"):
        assert right != wrong and len(right) == len(wrong)
        if m == "text":
            x, y = map(int, re.search(r"What is (\d) \+ (\d)\?", sft["messages"][0]["content"]).groups())
            assert int(right) == x + y and abs(int(wrong) - int(right)) == 1
        else:
            assert {right, wrong} <= set(md.ANSWERS[m])


def test_gold_judgements_get_maximal_reference_rewards(demo):
    out, _ = demo
    rows = [rl for split in md.SPLITS for *_, rl, _g, _r, _w in _items(out, split)]
    golds = [rl["solution"] for rl in rows]
    for text in golds:
        parsed = rubric.parse_judgement(text)
        assert parsed.ok, parsed.error
        assert set(parsed.dimensions) == set(rubric.DIMENSIONS)
        assert rubric.rubric_counts(parsed.reasoning[len("<think>"):-len("</think>")]) == (5, 5)
        assert {parsed.score_A, parsed.score_B} & {8, 9} and {parsed.score_A, parsed.score_B} & {2, 3}
    gold_cols = {k: [rl[k] for rl in rows] for k in ("better", "score_A", "score_B")}
    parts = rubric.reward_components(golds, **gold_cols)
    assert set(parts["format"]) == {1.0} and set(parts["content"]) == {1.0} and set(parts["rubric"]) == {1.0}
    assert parts["total"] == pytest.approx([1.0] * len(golds))


def test_media_decode_and_carry_the_label(demo):
    out, _ = demo
    palette = {k: np.array(v) for k, v in md.COLOURS.items()}
    for m, sft, _, gold, right, wrong in _items(out, "train"):
        if m == "image":
            with Image.open(out / sft["images"][0]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (56, 56)
                centre = np.asarray(im, np.float64)[24:32, 24:32].reshape(-1, 3).mean(0)
            assert min(palette, key=lambda c: np.linalg.norm(palette[c] - centre)) == right
        elif m == "video":
            with av.open(str(out / sft["videos"][0])) as c:
                st = c.streams.video[0]
                assert st.average_rate == md.VIDEO_FPS and st.codec_context.name in ("h264", "mpeg4")
                frames = [f.to_ndarray(format="rgb24").astype(np.float64) for f in c.decode(st)]
            assert len(frames) == md.VIDEO_FRAMES and frames[0].shape == (56, 56, 3)
            centroids = []
            for f in frames:  # the square is the pixels far from the grey background
                ys, xs = np.nonzero(np.abs(f - f[0, 0]).sum(-1) > 60)
                centroids.append((xs.mean(), ys.mean()))
            dx, dy = np.subtract(centroids[-1], centroids[0])
            assert np.sign([round(dx / 10), round(dy / 10)]).tolist() == list(md.DIRECTIONS[right])
        elif m == "audio":
            with wave.open(str(out / sft["audios"][0])) as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16000)
                x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
            peak = np.argmax(np.abs(np.fft.rfft(x))) * 16000 / len(x)
            lo, hi = md.PITCHES[right]
            assert lo - 20 <= peak <= hi + 20


def test_blank_media_control_same_records_constant_media(demo, tmp_path):
    out, _ = demo
    blank = tmp_path / "blank"
    info = md.make_demo(blank, n_train_per_modality=N_TRAIN, n_eval_per_modality=N_EVAL, seed=3, blank_media=True)
    for name in ("train", "eval", "grpo_train", "grpo_eval"):
        assert (blank / f"{name}.jsonl").read_bytes() == (out / f"{name}.jsonl").read_bytes()
    assert json.loads((blank / "meta.json").read_text())["blank_media"] is True
    assert info["media"] == dict.fromkeys(("images", "videos", "audios"), N_TRAIN + N_EVAL)
    images = {np.asarray(Image.open(p)).tobytes() for p in (blank / "media/images").glob("*.png")}
    assert len(images) == 1 and set(np.frombuffer(images.pop(), np.uint8)) == {md.BLANK_GREY}
    wavs = {p.read_bytes() for p in (blank / "media/audios").glob("*.wav")}
    assert len(wavs) == 1
    with wave.open(str(next((blank / "media/audios").glob("*.wav")))) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert 0 < np.abs(x).max() < 0.02 * 32767  # faint noise, not digital silence
    with av.open(str(next((blank / "media/videos").glob("*.mp4")))) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(int)
    assert len(frames) == md.VIDEO_FRAMES and np.abs(frames - md.BLANK_GREY).max() <= 3


def test_compact_prompt_same_judgement(demo, tmp_path):
    out, _ = demo
    md.make_demo(tmp_path / "c", n_train_per_modality=4, n_eval_per_modality=N_EVAL, seed=3, compact=True)
    for full, short in zip(_rows(out / "eval.jsonl"), _rows(tmp_path / "c/eval.jsonl")):
        m = rubric.modality_of(full)
        user, user_full = short["messages"][0]["content"], full["messages"][0]["content"]
        assert short["messages"][1] == full["messages"][1] and short.get(f"{m}s") == full.get(f"{m}s")
        assert user.startswith(TAGS[m]) and len(user) < 450 < len(user_full)
        for line in user.splitlines()[-3:]:  # Question / Answer A / Answer B carry the same values
            assert line.split(": ", 1)[1] in user_full


def test_cli(tmp_path, capsys):
    md.main([str(tmp_path / "cli"), "--n-train", "2", "--n-eval", "1", "--seed", "5"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["eval"] == dict.fromkeys(md.MODALITIES, 1)
    assert len(_rows(tmp_path / "cli/train.jsonl")) == 8 and len(_rows(tmp_path / "cli/grpo_eval.jsonl")) == 4
