"""The reference's judge prompts, rebuilt byte-for-byte from attributed template files.

The released Omni-RRM weights were trained and evaluated on specific prompt texts; a single changed space
moves the model off-distribution, so these are reproduced exactly, not paraphrased. Each body under
`templates/` is the literal text of a prompt in the published code (tmfk418/Omni-RRM); `manifest.json`
names its source file and function and says how the reference fills it. Filling replays the reference
step by step:

* ``kind: fstring`` — the body is the f-string literal's source text (``{{``/``}}`` escapes included).
  Fields are substituted in one pass with f-string semantics (``format(value, "")``; values are never
  re-scanned, so braces inside a question are safe), then the ``post`` steps run in order. The text,
  audio and video prompts are ``textwrap.dedent(f"<literal>").strip()`` — dedent runs *after* the answers are
  inserted, so an unindented line inside an answer cancels the dedent and the whole prompt keeps its
  4/8-space indentation. That is what the reference sent to the model, and it is reproduced.
* ``kind: concat`` — the body is the value of adjacent string literals (the Best-of-N prompts), with the
  f-string fields left in place; only those exact ``{name}`` fields are replaced.

The reference puts the prompt into the user message with a modality-specific prefix (`user_content`):
``"<audio>"`` (no newline) for audio, ``"<video>\\n"`` for video, nothing for text and image — for images
ms-swift itself prepends the missing ``<image>`` tag.

The GRPO system prompt (`--system /path/to/prompt.txt` in train/grpo_7b.sh) is *not* in the published
repository; see `system_prompt`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import textwrap
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omnirrm_jax.rubric.vocab import MODALITIES

_POST = {
    "dedent": textwrap.dedent,
    "strip": str.strip,
    # infer_lora_vl.py: prompt(row, r).replace("<image>\n", "") — applied to the filled prompt.
    "remove_image_tag": lambda s: s.replace("<image>\n", ""),
}
_FSTRING_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


class SystemPromptUnavailable(LookupError):
    """The reference GRPO system prompt file was not published, and none was supplied."""


@functools.cache
def _manifest() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("templates/manifest.json").read_text("utf-8"))


@functools.cache
def template_body(name: str) -> str:
    """The raw template text of `name`, verified against the manifest's sha256."""
    entry = template_info(name)
    data = resources.files(__package__).joinpath("templates", entry["file"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise RuntimeError(f"template {name!r} ({entry['file']}) was modified: sha256 {digest} != manifest "
                           f"{entry['sha256']}; it must stay byte-identical to the reference")
    return data.decode("utf-8")


def template_names() -> tuple[str, ...]:
    """All reproduced templates (judge prompts per benchmark, plus the Best-of-N comparison prompts)."""
    return tuple(_manifest()["templates"])


def template_info(name: str) -> dict[str, Any]:
    """Manifest entry of `name`: source path/function, modality, fields, post-processing, sha256."""
    templates = _manifest()["templates"]
    if name not in templates:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(templates)}")
    return templates[name]


def default_template(modality: str) -> str:
    """The judge template used for `modality` (text/image/video/audio)."""
    defaults = _manifest()["defaults"]
    if modality not in defaults:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return defaults[modality]


def _fill_fstring(body: str, values: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return format(values[m.group(1)], "")

    return _FSTRING_TOKEN_RE.sub(sub, body)


def _fill_concat(body: str, values: Mapping[str, Any]) -> str:
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in values))
    return pattern.sub(lambda m: format(values[m.group(0)[1:-1]], ""), body)


def render(name: str, question: Any, answer_a: Any, answer_b: Any, **extra: Any) -> str:
    """Fill template `name` exactly as the reference does.

    Args:
      name: a template name (see `template_names`).
      question, answer_a, answer_b: the inputs, already in the order the judge should see them (the
        reference's own A/B swapping, e.g. VL-RewardBench's random order, is the caller's business).
      **extra: template-specific fields, e.g. ``order="B-A"`` for ``mm_rewardbench``.
    Returns:
      The prompt text (without the media tag prefix; see `user_content`).
    """
    entry = template_info(name)
    args = {**entry.get("defaults", {}), **entry.get("constants", {}), **extra,
            "question": question, "answer_a": answer_a, "answer_b": answer_b}
    unknown = set(extra) - set(entry["fields"].values())
    if unknown:
        raise TypeError(f"template {name!r} has no field(s) {sorted(unknown)}")
    values = {expr: args[arg] for expr, arg in entry["fields"].items()}
    body = template_body(name)
    text = _fill_fstring(body, values) if entry["kind"] == "fstring" else _fill_concat(body, values)
    for step in entry["post"]:
        text = _POST[step](text)
    return text


def judge_prompt(modality: str, question: Any, answer_a: Any, answer_b: Any, *, template: str | None = None,
                 **extra: Any) -> str:
    """The reference judge prompt for a pair of answers.

    Args:
      modality: "text", "image", "video" or "audio" — picks the benchmark prompt the reference used
        (HH-RLHF, VL-RewardBench, ShareGPT-Video/MSR-VTT, Audio-HH-RLHF) unless `template` is given.
      question, answer_a, answer_b: the question and the two candidates, in judge order.
      template: an explicit template name (e.g. "mm_rewardbench").
      **extra: template-specific fields.
    """
    return render(template or default_template(modality), question, answer_a, answer_b, **extra)


def user_content(modality_or_template: str, prompt: str) -> str:
    """The user-message content the reference sends: media-tag prefix + prompt."""
    name = (modality_or_template if modality_or_template in _manifest()["templates"]
            else default_template(modality_or_template))
    return template_info(name)["content_prefix"] + prompt


def _media_count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (str, bytes, Mapping)):
        return 1 if value else 0
    try:
        return len(value)
    except TypeError:
        return 1


def modality_of(record: Mapping[str, Any]) -> str:
    """The judge modality of a data record.

    An explicit ``modality`` field wins; otherwise the non-empty media lists decide (``images``,
    ``videos``, ``audios`` — ms-swift's keys; a bare string counts as one item); no media means "text".
    Records with more than one media kind raise: the reference has no judge prompt for them (only the
    Best-of-N "bon_avqa" prompt, which must be asked for by name).
    """
    explicit = record.get("modality")
    if explicit is not None:
        value = str(explicit).strip().lower()
        if value not in MODALITIES:
            raise ValueError(f"record modality {explicit!r} is not one of {', '.join(MODALITIES)}")
        return value
    present = [m for m, key in (("image", "images"), ("video", "videos"), ("audio", "audios"))
               if _media_count(record.get(key))]
    if len(present) > 1:
        raise ValueError(f"record carries {' and '.join(present)}; no reference judge prompt covers mixed "
                         "media — set its 'modality' field or pick a template by name")
    return present[0] if present else "text"


def default_question(modality: str) -> str | None:
    """The question the reference substitutes when a record has none (Audio-HH-RLHF only)."""
    return template_info(default_template(modality)).get("default_question")


def system_prompt(system: str | None = None) -> str:
    """The GRPO system prompt, resolved the way ms-swift resolves `--system`.

    train/grpo_7b.sh passes ``--system /path/to/prompt.txt``. The reference later published that file as
    ``train/prompt.txt`` (1,004 bytes), but no copy of it was available offline when this was built, so it is not
    packaged: its text must match byte for byte, and a reconstruction would not. (SFT and every inference script pass
    no system prompt at all, i.e. the chat template's default.)

    Args:
      system: a path ending in ``.txt`` (read whole, like ms-swift) or the prompt text itself (ms-swift
        turns a literal backslash-n into a newline). None: use ``templates/system_grpo.txt`` if someone has
        placed the published file there.
    Raises:
      SystemPromptUnavailable: no argument and no packaged file.
    """
    if system is None:
        packaged = resources.files(__package__).joinpath("templates/system_grpo.txt")
        if not packaged.is_file():
            raise SystemPromptUnavailable(
                "the reference GRPO system prompt (tmfk418/Omni-RRM train/prompt.txt, passed by train/grpo_7b.sh "
                "as --system) is not packaged: it was not available offline when this build was made (not "
                "published with the first release); pass its path or text to system_prompt(), set it as "
                "data.pipeline.system, or place the file at omnirrm_jax/rubric/templates/system_grpo.txt")
        return packaged.read_text("utf-8")
    if system.endswith(".txt"):
        path = Path(system)
        if not path.is_file():
            raise FileNotFoundError(f"system prompt file not found: {system}")
        return path.read_text("utf-8")
    return system.replace("\\n", "\n")
