"""The policy side of Best-of-N, as the reference wrote it: the multiple-choice prompt a candidate answers, the parse
of that answer into a letter, the text the judge is shown for a candidate, and majority vote. Pure Python.

The reference's policy scripts (`inference/*/qwen2.5omni.py`, templates `mcq_*` in `rubric/templates/`) ask for
`{"answer": "A"|"B"|"C"|"D"}` and keep a run only when it parses to one of A-D; `qwen_all_runs` holds those letters in
draw order (runs that failed to parse are dropped, so a row can have fewer than five). Quirks kept here, each an
option where it changes numbers:

* MMMU and AVQA enumerate the options as "A. opt"; AVQA's stored options already start with their letter, so its
  prompt reads "A. A. motorcycle" (`letters="double"`, the reference) unless `letters="single"` strips them.
  Video-MME joins its (already lettered) options as stored.
* MMMU and Video-MME parse the reply with `json.loads` only; AVQA also accepts a fenced or embedded JSON object and
  finally any stand-alone A-D letter (`safe_parse_json`).
* The judge is shown the candidate as stored: the bare letter ("option letters only", `answer_form="letter"`, the
  reference: its judge never sees the options). `answer_form="text"` shows "B. automobile" instead.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any, Sequence

from omnirrm_jax.rubric import prompts

LETTERS = ("A", "B", "C", "D")
POLICY_TEMPLATES = {"mmmu": "mcq_mmmu", "videomme": "mcq_videomme", "avqa": "mcq_avqa"}
MAX_NEW_TOKENS = {"mmmu": 128, "videomme": 256, "avqa": 32}  # the reference scripts' RequestConfig(max_tokens=...)
_LETTER_PREFIX = re.compile(r"^\s*[A-Z]\s*[.)]\s*")
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)
_OBJECT = re.compile(r"\{.*\}", re.S)
_BARE = re.compile(r"\b([ABCD])\b")


def options_text(bench: str, options: Sequence[str], letters: str = "double") -> str:
    """The options block of the policy prompt. letters: "double" (the reference) or "single" (AVQA only: drop the
    stored "A. " before enumerating)."""
    if bench == "videomme":
        return "\n".join(str(o) for o in options)
    opts = [_LETTER_PREFIX.sub("", str(o), count=1) if bench == "avqa" and letters == "single" else str(o)
            for o in options]
    return "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(opts))


def policy_prompt(bench: str, question: str, options: Sequence[str], letters: str = "double") -> tuple[str, str]:
    """(media-tag prefix, prompt text) the reference sends the policy for one question."""
    name = POLICY_TEMPLATES[bench]
    text = prompts.render(name, question, None, None, options=options_text(bench, options, letters))
    return prompts.template_info(name)["content_prefix"], text


def _lenient_json(text: str) -> Any:
    """The AVQA script's `safe_parse_json`."""
    for attempt in (lambda: text, lambda: _FENCED.search(text).group(1), lambda: _OBJECT.search(text).group(0)):
        try:
            return json.loads(attempt())
        except (ValueError, AttributeError, TypeError):
            pass
    m = _BARE.search(text)
    return {"answer": m.group(1)} if m else {"answer": "error"}


def parse_answer(bench: str, text: str) -> str:
    """A policy reply -> "A".."D", or "error" (the reference's rule for `bench`)."""
    text = text.strip()
    try:
        obj = _lenient_json(text) if bench == "avqa" else json.loads(text)
        ans = obj.get("answer", "error").strip().upper()
    except (ValueError, AttributeError, TypeError):
        return "error"
    return ans if ans in LETTERS else "error"


def display(answer: str, options: Sequence[str], form: str = "letter") -> str:
    """What the judge is shown for a candidate: the letter (reference) or, form "text", the letter with its option
    ("B. automobile"; an option stored with its letter is shown as stored)."""
    if form == "letter" or answer not in LETTERS or LETTERS.index(answer) >= len(options):
        return answer
    opt = str(options[LETTERS.index(answer)])
    return opt if _LETTER_PREFIX.match(opt) and opt.lstrip().startswith(answer) else f"{answer}. {opt}"


def majority(answers: Sequence[str]) -> int | None:
    """Index of the first answer with the most votes (`Counter.most_common(1)`: ties go to the answer seen first, as
    in the reference); None for no answers."""
    if not answers:
        return None
    top = collections.Counter(answers).most_common(1)[0][0]
    return list(answers).index(top)
