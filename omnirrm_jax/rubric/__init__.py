"""Rubric layer: the reference judge prompts, the judgement schema and parser, and the GRPO rewards.

Pure Python (stdlib only, no JAX, no numpy) so it runs in data workers and the rollout loop's host code.
Everything here is compatible with the published Omni-RRM code (tmfk418/Omni-RRM): prompts byte-identical,
rewards value-identical in ``mode="reference"``.

Public API:
  judge_prompt(modality, question, answer_a, answer_b, *, template=None, **extra) -> str
  user_content(modality_or_template, prompt) -> str      media tag + prompt, as the reference sends it
  modality_of(record) -> "text" | "image" | "video" | "audio"
  system_prompt(system=None) -> str                       GRPO system prompt (not published; see docs)
  render, template_names, template_info                   all reproduced templates, incl. Best-of-N
  parse_judgement(text) -> ParseResult                    never raises; .ok, .error, fields
  format_judgement(score_A, score_B, better, reasoning) -> str
  evaluate_judgements(rows), reference_output_fields(text), verdict_correct, scores_correct
  format_reward, content_reward, rubric_reward, combined_reward, reward_components, gold_from_solution
"""

from omnirrm_jax.rubric.parse import (
    evaluate_judgements,
    parse_judgement,
    reference_extract_json,
    reference_output_fields,
    scores_correct,
    verdict_correct,
)
from omnirrm_jax.rubric.prompts import (
    SystemPromptUnavailable,
    default_question,
    judge_prompt,
    modality_of,
    render,
    system_prompt,
    template_info,
    template_names,
    user_content,
)
from omnirrm_jax.rubric.rewards import (
    DEFAULT_WEIGHTS,
    combined_reward,
    content_reward,
    format_checks,
    format_reward,
    gold_from_solution,
    reward_components,
    rubric_counts,
    rubric_reward,
)
from omnirrm_jax.rubric.schema import DIMENSIONS, KEYS, VERDICTS, ParseResult, format_judgement, verdict_tag

__all__ = [
    "DEFAULT_WEIGHTS", "DIMENSIONS", "KEYS", "VERDICTS", "ParseResult", "SystemPromptUnavailable",
    "combined_reward", "content_reward", "default_question", "evaluate_judgements", "format_checks",
    "format_judgement", "format_reward", "gold_from_solution", "judge_prompt", "modality_of",
    "parse_judgement", "reference_extract_json", "reference_output_fields", "render", "reward_components",
    "rubric_counts", "rubric_reward", "scores_correct", "system_prompt", "template_info", "template_names",
    "user_content", "verdict_correct", "verdict_tag",
]
