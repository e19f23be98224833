"""Best-of-N readers on the released excerpts (/work/shared/benchmarks or tests' copy), their quirks, bad rows; the
policy prompt and the reference's parsing of its answers."""
import hashlib
import json
import os
from pathlib import Path

import pytest

from omnirrm_jax.bon import answers as A
from omnirrm_jax.bon.items import BonDataError, ReadOptions, read_items
from omnirrm_jax.rubric import prompts

BENCH_DIR = str(Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks")  # as tests/eval/test_readers
FILES = {"mmmu": "mmmu_bon_100.jsonl", "videomme": "videomme_100.jsonl", "avqa": "avqa_100.json"}
needs_excerpts = pytest.mark.skipif(not os.path.isdir(BENCH_DIR), reason="benchmark excerpts not available")


def excerpt(bench):
    return os.path.join(BENCH_DIR, FILES[bench])


@needs_excerpts
def test_mmmu_excerpt_as_released():
    res = read_items("mmmu", excerpt("mmmu"))
    assert res.rows == 100 and res.bad == {} and res.short == 1 and len(res.items) == 99  # the row with no runs
    first = res.items[0]
    assert first.id == "validation_Math_1" and first.gold == "C" and first.candidates == ("B", "B", "A", "B", "C")
    assert first.options == ("1", "2", "Not exist") and first.media == {"images": ("validation_Math_1/image_1.png",)}
    kept = read_items("mmmu", excerpt("mmmu"), options=ReadOptions(short_rows="keep"))
    assert len(kept.items) == 100 and sum(1 for it in kept.items if not it.candidates) == 1
    # the reference's own majority baseline is reproduced by our majority rule on the stored runs
    for it in res.items:
        assert it.candidates[A.majority(it.candidates)] == it.record["qwen_majority"], it.id


@needs_excerpts
def test_videomme_and_avqa_excerpts():
    v = read_items("videomme", excerpt("videomme"))
    assert len(v.items) == 100 and v.items[0].candidates is None and v.items[0].id == "row_0"
    assert v.items[0].media == {"videos": ("fFjv93ACGo8.mp4",)} and v.items[0].gold == "C"
    a = read_items("avqa", excerpt("avqa"))
    assert len(a.items) == 100 and a.items[0].gold == "B" and a.items[0].id == "0"
    assert a.items[0].media == {"images": ("images/sample_0.jpg",), "audios": ("audios/sample_0.wav",)}


def test_bad_rows_skipped_and_counted_then_refused(tmp_path):
    good = {"id": "x", "question": "q", "options": ["a", "b"], "answer": "A", "images": [], "qwen_all_runs": ["A", "B"]}
    lines = [json.dumps(dict(good, id=f"r{i}")) for i in range(19)] + ["{not json"]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    res = read_items("mmmu", str(path))
    assert len(res.items) == 19 and res.bad == {"malformed_json": 1}
    assert res.bad_examples[0].startswith(f"{path} line 20: malformed_json")
    lines[3] = json.dumps({k: v for k, v in good.items() if k != "question"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BonDataError, match=r"2 of 20 rows are bad.*line 4: missing_field: 'question' is missing"):
        read_items("mmmu", str(path), options=ReadOptions(max_bad_ratio=0.05))
    with pytest.raises(BonDataError, match="no such file"):
        read_items("mmmu", str(tmp_path / "nope.jsonl"))
    with pytest.raises(BonDataError, match="unknown Best-of-N benchmark"):
        read_items("gsm8k", str(path))


def test_policy_prompts_are_the_reference_text():
    for name, digest in {"mcq_mmmu": "878c78c297432e7124d17dd07becbd72dc73ffbac64d32fead55508ee5f981c7",
                         "mcq_videomme": "74c0af7f3ee0b97bf3fc223819aa27c2ddc46a69cc8080ca5352e53faf82a858",
                         "mcq_avqa": "3dbaadc93cb50eb80b7912e4a7bf7aff29fe390ab0df7364c4805429fc91095f"}.items():
        assert hashlib.sha256(prompts.template_body(name).encode()).hexdigest() == digest
    prefix, text = A.policy_prompt("mmmu", "What is {x}?", ["1", "2"])
    assert prefix == "<image>\n"
    assert text == ("You are a knowledgeable AI assistant. \nPlease carefully analyze the given image(s) and the "
                    "multiple-choice question.\nSelect the single most accurate answer letter.\n\n### Question\n"
                    "What is {x}?\n\n### Options\nA. 1\nB. 2\n\n### Output Format\n"
                    '{"answer": "A"|"B"|"C"|"D"}\n\n### IMPORTANT\n- Only output a valid JSON object.\n'
                    "- Do not include any explanation, reasoning, or extra text.")
    _, avqa = A.policy_prompt("avqa", "Source?", ["A. motorcycle", "B. bus"])
    assert "### Options\nA. A. motorcycle\nB. B. bus\n" in avqa and avqa.startswith("You are a knowledgeable AI "
                                                                                    "assistant.\nPlease")
    _, single = A.policy_prompt("avqa", "Source?", ["A. motorcycle", "B. bus"], letters="single")
    assert "### Options\nA. motorcycle\nB. bus\n" in single
    _, video = A.policy_prompt("videomme", "Genre?", ["A. news", "B. vlog"])
    assert "### Options\nA. news\nB. vlog\n" in video and prompts.template_info("mcq_videomme")["content_prefix"] \
        == "<video>\n"


def test_answer_parsing_follows_each_script():
    assert A.parse_answer("mmmu", ' {"answer": "b"} ') == "B"
    assert A.parse_answer("mmmu", '```json\n{"answer": "B"}\n```') == "error"  # json.loads only
    assert A.parse_answer("avqa", '```json\n{"answer": "B"}\n```') == "B"       # safe_parse_json
    assert A.parse_answer("avqa", "I think C is right") == "C"
    assert A.parse_answer("videomme", '{"answer": "E"}') == "error"
    assert A.parse_answer("mmmu", '{"answer": 3}') == "error"
    assert A.display("B", ["x", "automobile"], "text") == "B. automobile"
    assert A.display("B", ["A. x", "B. bus"], "text") == "B. bus"
    assert A.display("B", ["x", "y"], "letter") == "B"


@needs_excerpts
def test_short_rows_follow_each_reference_script(tmp_path):
    """videomme_final/bon.py keeps a row whose votes have one key (its only answer is the pick) and skips one with
    none; the MMMU and AVQA scripts skip both."""
    import json
    with open(excerpt("videomme")) as f:
        row = json.loads(f.readline())
    path = tmp_path / "videomme.jsonl"
    path.write_text("".join(json.dumps({**row, "qwen_votes": v}) + "\n" for v in ({"C": 5}, {}, {"A": 2, "C": 3})))
    res = read_items("videomme", str(path))
    assert res.short == 2 and [it.candidates for it in res.items] == [("C",), ("A", "C")]
    assert len(read_items("videomme", str(path), options=ReadOptions(short_rows="skip")).items) == 1
    assert len(read_items("videomme", str(path), options=ReadOptions(short_rows="keep")).items) == 3


@needs_excerpts
def test_majority_on_a_votes_only_file_reads_the_vote_counts(tmp_path):
    """AVQA / Video-MME policy files carry only qwen_votes: the candidates are its distinct keys, so a majority
    over them was the first key (the 'first' baseline under another name)."""
    import json

    from omnirrm_jax.bon import strategies as S
    from omnirrm_jax.bon.run import SelectOptions, context
    with open(excerpt("videomme")) as f:
        row = json.loads(f.readline())
    path = tmp_path / "videomme.jsonl"
    path.write_text("".join(json.dumps({**row, "qwen_votes": v}) + "\n"
                            for v in ({"B": 1, "C": 4}, {"C": 2, "D": 3}, {"A": 2, "D": 2})))
    items = read_items("videomme", str(path)).items
    picks = S.majority_vote(context(items, SelectOptions()), None)
    assert {n: [it.candidates[i] for it, i in zip(items, p)] for n, p in picks.items()} == {2: ["C", "D", "A"]}
