"""Judge prompts must be byte-identical to what the published Omni-RRM scripts send the model.

Two independent checks: the template files hash to digests computed from the reference sources when they
were read (and open/close with the reference's lines), and every rendered prompt equals the output of the
reference builder functions themselves (tests/rubric/reference_prompts.py) on awkward inputs.
"""
import hashlib
import subprocess
import sys

import pytest

from omnirrm_jax import rubric
from omnirrm_jax.rubric import prompts
from tests.rubric import reference_prompts as ref

# sha256 of each template body = the reference literal (f-string source, or the value of the BoN string
# concatenation with its fields left in place), with the first and last lines of the body.
DIGESTS = {
    "hh_rlhf": ("e83d4f918391663b5dae58990d047cd61dff973130fb96eb11725067515f318b", "", "    "),
    "audio_hh_rlhf": ("5fbf6ba22426d1d0dd9520ec2f76e2977624836cb75d75bdb6b970ac78c738d1", "", "    "),
    "sharegpt_video": ("0b206899097dee3b27acd150a6c2c29cf77bf16d174caf02bbc4ebdeae9fd6d4", "", "    "),
    "vl_reward": ("4c62f2160227058c26fc2bacfa61c5f70604055c63a3819d2d97388744f9b8d1", "", "    "),
    "mm_rewardbench": ("c422b99d92a7661d2e531e07088623502cd9c5a2c44e1c2dc5545b8d131851a5",
                       "You are a helpful and thoughtful AI assistant with expertise in multimodal reasoning.", ""),
    "bon_mmmu": ("6bfbaee9a526d9a65658c7519fdbc8c71d8e9b7227a6757c8040a386bae0dc8f",
                 "You are an expert judge for multimodal QA comparison.", "[Answer B] {ans_b}"),
    "bon_videomme": ("9e9deff76a823c77445405b7105d10346bb6ac67abb0b90d8995f964c6426099",
                     "You are an expert judge for multimodal QA comparison.", "[Answer B] {ans_b}"),
    "bon_avqa": ("4ae5807bf5b22fe5defe64e026d73041a3765fec5c240b7168517e6eda4fb559",
                 "You are an expert judge for multimodal QA comparison.", "[Answer B] {ans_b}"),
}

INPUTS = [
    ("What is shown?", "A cat.", "A dog."),
    ("Multi\nline {question} with {{braces}}", "line one\nunindented second line", "    indented\n\tand tabbed"),
    ("<image>\nWhat is in the picture?", "It shows <image>\nnothing", "x"),
    ("", "", ""),
    ("Unicode ✓ — 中文 \u26a0\ufe0f", "{\"score_A\": 9}", "}{"),
    ("trailing spaces   \n   ", "\n\n", "  B  "),
    (None, 7, 3.5),
]


# The policy's multiple-choice prompts of the Best-of-N scripts (checked in tests/bon/test_items.py).
POLICY_TEMPLATES = {"mcq_mmmu", "mcq_videomme", "mcq_avqa"}
# The teacher prompts of Omni-Preference construction (`omnirrm synth`): sha256 of the f-string literal's source,
# read from "Omni Preference Construction/{image,video}/doubao_example.py" and ".../audio/gpt_example.py".
ANNOTATION_DIGESTS = {
    "annotate_image": "d171dd211ad2c6e7b06a47abea93e95a25c21fc3458381c65a1d539f3f547d20",
    "annotate_video": "ea345cc78550b1925aa10fc0598b51016f7ee4e9e493ae60b08d912d93b28fdc",
    "annotate_audio": "c4a21f2702d258a5d628760aa231517ffffe4b2bac547811ca7338653d934f87",
}


def test_manifest_lists_every_template_with_attribution():
    assert set(rubric.template_names()) == set(DIGESTS) | POLICY_TEMPLATES | set(ANNOTATION_DIGESTS)
    for name in DIGESTS:
        info = rubric.template_info(name)
        assert info["source_path"].startswith("inference/") and info["source_function"]
    assert prompts._manifest()["source_repo"] == "tmfk418/Omni-RRM"


@pytest.mark.parametrize("name", sorted(ANNOTATION_DIGESTS))
def test_annotation_templates(name):
    body = prompts.template_body(name)
    assert hashlib.sha256(body.encode()).hexdigest() == ANNOTATION_DIGESTS[name]
    info = rubric.template_info(name)
    assert info["source_path"].startswith("Omni Preference Construction/") and info["modality"] in name
    text = prompts.render(name, "Q {x}?", "ans A", "ans B", media_name="clip_1")
    assert "Q {x}?" in text and "ans A" in text and "ans B" in text and "clip_1" in text
    assert '"score_A"' in text and "{{" not in text and "Safety and Ethical Alignment" in text
    # image and video: textwrap.dedent(f"...").strip(); audio: the bare f-string (leading and trailing newline)
    assert text.startswith("\n") == (name == "annotate_audio")


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_template_bytes(name):
    digest, first, last = DIGESTS[name]
    body = prompts.template_body(name)
    assert hashlib.sha256(body.encode("utf-8")).hexdigest() == digest
    assert rubric.template_info(name)["sha256"] == digest
    lines = body.split("\n")
    assert lines[0] == first and lines[-1] == last


def _reference(name, q, a, b):
    if name == "hh_rlhf":
        return ref.text_hh_rlhf(q, a, b)
    if name == "audio_hh_rlhf":
        return ref.audio_hh_rlhf(q, a, b)
    if name == "sharegpt_video":
        return ref.video_sharegpt(q, a, b)
    if name == "vl_reward":  # infer_lora_vl.py: prompt(row, random_number).replace("<image>\n", "")
        return ref.image_vl_reward({"query": q, "response": [a, b]}, 0).replace("<image>\n", "")
    if name == "mm_rewardbench":  # the reference always calls it with random_number=0
        return ref.image_mm_rewardbench({"Text": q, "Output1": a, "Output2": b}, 0)
    return getattr(ref, name)(q, a, b)


@pytest.mark.parametrize("name", sorted(DIGESTS))
@pytest.mark.parametrize("inputs", INPUTS, ids=range(len(INPUTS)))
def test_render_equals_reference_builder(name, inputs):
    assert rubric.render(name, *inputs) == _reference(name, *inputs)


def test_judge_prompt_by_modality():
    q, a, b = INPUTS[1]
    assert rubric.judge_prompt("text", q, a, b) == ref.text_hh_rlhf(q, a, b)
    assert rubric.judge_prompt("audio", q, a, b) == ref.audio_hh_rlhf(q, a, b)
    assert rubric.judge_prompt("video", q, a, b) == ref.video_sharegpt(q, a, b)
    assert rubric.judge_prompt("image", q, a, b) == _reference("vl_reward", q, a, b)
    swapped = ref.image_mm_rewardbench({"Text": q, "Output1": b, "Output2": a}, 1)
    assert rubric.judge_prompt("image", q, a, b, template="mm_rewardbench", order="B-A") == swapped
    with pytest.raises(ValueError, match="unknown modality"):
        rubric.judge_prompt("smell", q, a, b)
    with pytest.raises(TypeError, match="no field"):
        rubric.judge_prompt("text", q, a, b, order="A-B")


def test_dedent_quirk_is_reproduced():
    """An unindented line in an answer cancels the reference's dedent: the prompt keeps its indentation."""
    flat = rubric.judge_prompt("text", "q", "one line", "b")
    ragged = rubric.judge_prompt("text", "q", "line\nunindented", "b")
    assert flat.startswith("You are a helpful") and "\n### Task\n" in flat
    assert "\n    ### Task\n" in ragged


def test_user_content_prefixes():
    assert rubric.user_content("audio", "P") == "<audio>P"
    assert rubric.user_content("video", "P") == "<video>\nP"
    assert rubric.user_content("text", "P") == "P" and rubric.user_content("image", "P") == "P"
    assert rubric.user_content("bon_mmmu", "P") == "P"
    assert rubric.default_question("audio") == "What is the audio talking about?"
    assert rubric.default_question("text") is None


@pytest.mark.parametrize("record,want", [
    ({"messages": []}, "text"),
    ({"images": ["x.jpg"]}, "image"),
    ({"images": [], "videos": ["v.mp4"]}, "video"),
    ({"audios": "a.wav"}, "audio"),
    ({"images": None, "audios": []}, "text"),
    ({"modality": "Audio", "images": ["x.jpg"]}, "audio"),
])
def test_modality_of(record, want):
    assert rubric.modality_of(record) == want


def test_modality_of_rejects_ambiguous_records():
    with pytest.raises(ValueError, match="image and audio"):
        rubric.modality_of({"images": ["i.jpg"], "audios": ["a.wav"]})
    with pytest.raises(ValueError, match="not one of"):
        rubric.modality_of({"modality": "omni"})


def test_system_prompt(tmp_path):
    with pytest.raises(rubric.SystemPromptUnavailable, match="not published"):
        rubric.system_prompt()
    path = tmp_path / "prompt.txt"
    path.write_bytes(b"Judge carefully.\r\nOutput JSON.\n")
    assert rubric.system_prompt(str(path)) == "Judge carefully.\nOutput JSON.\n"   # read whole, like ms-swift
    assert rubric.system_prompt("line1\\nline2") == "line1\nline2"
    with pytest.raises(FileNotFoundError):
        rubric.system_prompt(str(tmp_path / "missing.txt"))


def test_modified_template_is_refused(monkeypatch):
    manifest = prompts._manifest()
    entry = dict(manifest["templates"]["hh_rlhf"], sha256="0" * 64)
    monkeypatch.setitem(manifest["templates"], "hh_rlhf", entry)
    prompts.template_body.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="byte-identical"):
            prompts.template_body("hh_rlhf")
    finally:
        monkeypatch.undo()
        prompts.template_body.cache_clear()


def test_rubric_imports_no_jax_or_numpy():
    code = "import sys, omnirrm_jax.rubric; print(sorted(m for m in ('jax', 'numpy', 'flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
