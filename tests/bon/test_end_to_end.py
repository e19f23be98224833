"""Best-of-N end to end with a real tiny thinker (re-randomised HF Qwen2.5-Omni, SentencePiece tokenizer): the
reward() entry point against eval.verdict's per-pair probabilities, `omnirrm bon select` over the MMMU excerpt
(table, JSON and plot), and `omnirrm bon sample` -> `select` on the AVQA excerpt."""
import json
import math
import os
import shutil

import numpy as np
import pytest

import omnirrm_jax
from omnirrm_jax import cli
from omnirrm_jax.bon.items import ReadOptions, read_items
from omnirrm_jax.bon.scorers import VERDICT_OPENING
from omnirrm_jax.eval import pairs, verdict
from omnirrm_jax.eval.judge_runner import load_judge
from omnirrm_jax.models.thinker import model_inputs
from tests.bon.test_items import excerpt, needs_excerpts
from tests.eval.judge_env import judge_env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return judge_env(str(tmp_path_factory.getbasetemp() / "judge_env"))


@pytest.fixture(scope="module")
def judge(env):
    return load_judge(env["hf_dir"], tokenizer=env["tok_path"])


def test_reward_equals_the_verdict_probabilities_per_pair(env, judge):
    model, cfg, tok = judge
    qs = ["What colour is the shape?", "What is 3 + 4?", "Is the tone high or deep?"]
    a, b = ["blue", "7", "high"], ["pink", "5 is the answer", "deep"]
    media = [{"images": [env["image"]]}, None, {"audios": [env["audio"]], "images": [env["image"]]}]
    scores, probs = omnirrm_jax.reward(qs, a, b, media=media, judge=judge, batch_size=2, return_probs=True)
    assert scores.shape == (3,) and np.all(np.isfinite(scores)) and np.all(np.abs(scores) <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    from data_prep.rows import RowOptions
    for i, tmpl in enumerate(["bon_mmmu", "bon_mmmu", "bon_avqa"]):
        pair = pairs.check_pair({"question": qs[i], "answer_a": a[i], "answer_b": b[i], "template": tmpl,
                                 "modality": "image", **(media[i] or {})})
        prepared = pairs.prepare_pair(pair, 0, tok, cfg, RowOptions(media_root="/"), max_length=8192)
        batch = pairs.make_batch(prepared.examples, 1, tok, cfg)
        vp = verdict.verdict_probabilities(model, tok, model_inputs(batch), [tok.encode(VERDICT_OPENING + 'B"}')])[0]
        assert scores[i] == pytest.approx(vp.reward, abs=1e-5)
        np.testing.assert_allclose(probs[i], [vp.probs["A"], vp.probs["B"], vp.probs["equal"]], atol=1e-5)
    swapped = omnirrm_jax.reward(qs[:1], a[:1], b[:1], media=media[:1], judge=judge, swap=True)
    rev = omnirrm_jax.reward(qs[:1], b[:1], a[:1], media=media[:1], judge=judge)
    assert swapped[0] == pytest.approx(0.5 * (scores[0] - rev[0]), abs=1e-5)
    with pytest.raises(ValueError, match="must be equal"):
        omnirrm_jax.reward(qs, a[:2], b, judge=judge)


def _mmmu_media(env, root, items):
    for it in items:
        for rel in it.media["images"]:
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            shutil.copy(env["image"], os.path.join(root, rel))


@needs_excerpts
@pytest.mark.slow
def test_bon_select_on_the_mmmu_excerpt(env, tmp_path, capsys):
    items = read_items("mmmu", excerpt("mmmu"), options=ReadOptions(limit=3)).items
    _mmmu_media(env, str(tmp_path / "media"), items)
    out = tmp_path / "report"
    code = cli.main(["bon", "select", env["hf_dir"], "--tokenizer", env["tok_path"], "--dtype", "float32",
                     "--bench", "mmmu", "--data", excerpt("mmmu"), "--media-root", str(tmp_path / "media"),
                     "--out", str(out), "--limit", "3", "--max-n", "5"])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["ns"] == [2, 3, 4, 5] and rep["items"] == 3
    assert set(rep["strategies"]) == {"elimination", "tournament", "knockout", "reward", "reward_ref", "first",
                                      "majority", "oracle"}
    for name, s in rep["strategies"].items():
        assert all(0.0 <= v <= 1.0 for v in s["accuracy"].values()), name
    assert rep["strategies"]["first"]["correct"]["5"] == sum(it.candidates[0] == it.gold for it in items)
    assert rep["strategies"]["oracle"]["correct"]["5"] == sum(it.gold in it.candidates for it in items)
    assert rep["strategies"]["elimination"]["judge_calls"] > 0 and rep["strategies"]["reward"]["judge_calls"] > 0
    assert rep["published"]["Omni-RRM (paper)"] == {"2": 52.9, "10": 56.4}
    md = (out / "report.md").read_text()
    assert "| elimination |" in md and "N=5" in md and md in capsys.readouterr().out
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    assert rep["judge_errors"] == {} and rep["strategies"]["elimination"]["model_calls"] > 0
    # the media not where --media-root says: every judge strategy would silently be "first"; the run stops instead
    code = cli.main(["bon", "select", env["hf_dir"], "--tokenizer", env["tok_path"], "--dtype", "float32",
                     "--bench", "mmmu", "--data", excerpt("mmmu"), "--media-root", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "r2"), "--limit", "3", "--max-n", "5"])
    assert code != 0 and "could not judge" in capsys.readouterr().err


@needs_excerpts
@pytest.mark.slow
def test_bon_sample_then_select_on_the_avqa_excerpt(env, tmp_path, capsys):
    from PIL import Image

    media = tmp_path / "avqa"
    for i in range(2):
        (media / "images").mkdir(parents=True, exist_ok=True)
        (media / "audios").mkdir(parents=True, exist_ok=True)
        Image.open(env["image"]).convert("RGB").save(media / "images" / f"sample_{i}.jpg")
        shutil.copy(env["audio"], media / "audios" / f"sample_{i}.wav")
    cands = tmp_path / "cands.jsonl"
    code = cli.main(["bon", "sample", env["hf_dir"], "--tokenizer", env["tok_path"], "--dtype", "float32",
                     "--bench", "avqa", "--data", excerpt("avqa"), "--media-root", str(media), "--output", str(cands),
                     "--limit", "3", "-n", "3", "--max-new-tokens", "6", "--batch-size", "2"])
    assert code == 0
    rows = [json.loads(line) for line in cands.read_text().splitlines()]
    assert len(rows) == 3 and rows[2]["error"]["reason"] == "missing_file"  # no media made for the third
    for r in rows[:2]:
        assert len(r["runs_raw"]) == 3 and all(a in "ABCD" for a in r["qwen_all_runs"])
        assert r["problem_id"] in (0, 1) and r["qwen_votes"] == {k: r["qwen_all_runs"].count(k) for k in r["qwen_votes"]}
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"rows": 3, "sampled": 2, "errors": 1, "bad_rows": {}, "output": str(cands)}
    out = tmp_path / "report"
    code = cli.main(["bon", "select", "--bench", "avqa", "--data", str(cands), "--out", str(out),
                     "--short-rows", "keep", "--max-n", "3", "--strategies", "first,majority,oracle"])
    if max(len(r["qwen_all_runs"]) for r in rows) < 2:  # a random policy rarely writes {"answer": ...}
        assert code == 2 and "no item has two or more candidates" in capsys.readouterr().err
        return
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["items"] == 3 and not math.isnan(rep["strategies"]["majority"]["accuracy"]["2"])
