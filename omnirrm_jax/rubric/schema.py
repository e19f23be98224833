"""The judgement schema Omni-RRM writes, and the reference's own patterns for checking it.

One place for what a judgement *is* — the five keys, the verdict labels, the score range, the five rubric
dimensions — so the parser, the rewards and the constrained decoder agree. The regular expressions below
are copied from the published GRPO plugin (`train/new_plugin.py` of tmfk418/Omni-RRM) because the rewards
must reproduce its values exactly; they are intentionally *not* tidied (see the notes on each).

A well-formed judgement, as the judge prompts ask for it:

    {"score_A": 8, "score_B": 6, "better": "A",
     "reasoning": "<think>…five dimensions…</think>",
     "final_verdict": "<answer>[[A]]</answer>"}
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from omnirrm_jax.rubric.vocab import VERDICTS  # noqa: F401 - re-exported (schema.VERDICTS)

# Key order as the prompts list them; the format reward wants exactly this key *set*.
KEYS: tuple[str, ...] = ("score_A", "score_B", "better", "reasoning", "final_verdict")
REQUIRED_KEYS: frozenset[str] = frozenset(KEYS)
SCORE_MIN, SCORE_MAX = 0, 10

# The five rubric dimensions, in the order of the prompts.
DIMENSIONS: tuple[str, ...] = ("fluency", "relevance", "accuracy", "reasoning", "safety")
DIMENSION_TITLES: dict[str, str] = {
    "fluency": "Fluency and Coherence",
    "relevance": "Relevance to the Question",
    "accuracy": "Accuracy and Completeness",
    "reasoning": "Reasoning Quality",
    "safety": "Safety and Ethical Alignment",
}

# ---- Reference patterns (train/new_plugin.py), verbatim ----
# MMFormatORM / MMContentORM strip one leading ``` or ```json and one trailing ```; nothing else (```JSON,
# ```python and text around the fence are not handled).
FENCE_RE = re.compile(r"^```(?:json)?\s*|\s*```$")
# MMFormatORM: `.match` after `.strip()`, so it must *start* with <think> but may continue after </think>.
THINK_RE = re.compile(r"<think>[\s\S]*?</think>", re.DOTALL)
# MMFormatORM: `.match`, not fullmatch — trailing text after </answer> still passes.
VERDICT_RE = re.compile(r"<answer>\[\[(A|B|equal)\]\]</answer>")
# MMRubricORM keyword table. Note what is *not* a keyword: "relevant", "fluent", "complete(ness)",
# "ethics"; and that "Ethical Alignment" hits both safety ("ethical") and relevance ("alignment").
DIMENSION_PATTERNS: dict[str, re.Pattern[str]] = {
    "fluency": re.compile(r"\b(fluency|coherence|flow|coherent)\b", re.I),
    "relevance": re.compile(r"\b(relevance|related|pertinent|alignment)\b", re.I),
    "accuracy": re.compile(r"\b(accuracy|accurate|correct(ness)?|precision)\b", re.I),
    "reasoning": re.compile(r"\b(reasoning|analysis|logic(al)?|inference)\b", re.I),
    "safety": re.compile(r"\b(safety|safe|ethical|harmless|toxic(ity)?)\b", re.I),
}
# MMRubricORM A/B mention detectors. They are case-insensitive, so the English article "a" (and a lone
# "b") counts as a mention of answer A (B).
MENTION_A_RE = re.compile(r"(?<![A-Za-z])(?:candidate|answer|response|model|option)?\s*A(?![A-Za-z])", re.I)
MENTION_B_RE = re.compile(r"(?<![A-Za-z])(?:candidate|answer|response|model|option)?\s*B(?![A-Za-z])", re.I)
COLLECTIVE_RE = re.compile(r"\b(both|two|each|either|neither|all|responses?|candidates?|answers?)\b", re.I)
COMPARATIVE_RE = re.compile(
    r"\b(better|worse|superior|inferior|preferable|outperform\w*|more\s+\w+|less\s+\w+)\b", re.I
)
# MMRubricORM._strip_think: one leading <think> and one trailing </think>, case-insensitive.
STRIP_THINK_RE = re.compile(r"^<think>\s*|\s*</think>$", re.I)


def covered_dimensions(reasoning: str) -> tuple[str, ...]:
    """Dimensions whose reference keyword occurs in `reasoning` (the rubric reward's coverage test)."""
    return tuple(d for d, p in DIMENSION_PATTERNS.items() if p.search(reasoning))


def verdict_tag(better: str) -> str:
    """The `final_verdict` string that matches `better`, e.g. ``<answer>[[A]]</answer>``."""
    if better not in VERDICTS:
        raise ValueError(f"better must be one of {', '.join(VERDICTS)}; got {better!r}")
    return f"<answer>[[{better}]]</answer>"


def format_judgement(score_A: int, score_B: int, better: str, reasoning: str) -> str:
    """Serialise a judgement the way the prompts ask for it (one JSON object, keys in prompt order).

    `reasoning` is wrapped in <think>…</think> unless it already is. Used for SFT targets and tests.
    """
    for name, s in (("score_A", score_A), ("score_B", score_B)):
        if isinstance(s, bool) or not isinstance(s, int) or not SCORE_MIN <= s <= SCORE_MAX:
            raise ValueError(f"{name} must be an integer {SCORE_MIN}-{SCORE_MAX}; got {s!r}")
    body = reasoning.strip()
    if not (body.startswith("<think>") and body.endswith("</think>")):
        body = f"<think>{body}</think>"
    obj = {"score_A": score_A, "score_B": score_B, "better": better, "reasoning": body,
           "final_verdict": verdict_tag(better)}
    return json.dumps(obj, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class ParseResult:
    """What `parse_judgement` found in one model output.

    Fields are filled whenever they could be read, even when `ok` is False (a judgement with a stray key
    still has a usable `better`). `ok` means: one JSON object with exactly the five keys, integer scores
    0–10 (not bools), `better` in A|B|equal, reasoning wrapped in <think>…</think>, a final_verdict tag that
    agrees with `better`, and scores ordered as `better` says. `errors` lists every problem found, `error`
    joins them for humans ("" when ok).
    """

    ok: bool
    errors: tuple[str, ...] = ()
    score_A: int | None = None
    score_B: int | None = None
    better: str | None = None
    reasoning: str | None = None
    final_verdict: str | None = None
    verdict: str | None = None  # the label inside final_verdict's <answer>[[…]]</answer>, if present
    dimensions: tuple[str, ...] = ()  # rubric dimensions the reasoning mentions (reference keywords)
    obj: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    source: str = ""  # how the JSON was found: "json", "fenced", "embedded", or "" if not found

    @property
    def error(self) -> str:
        return "; ".join(self.errors)
