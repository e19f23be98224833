"""Tricky judge outputs shared by the reward and parser tests.

Each case: (id, completion, gold (better, score_A, score_B), cmp_gt). The completions aim at the places
where the reference plugin's behaviour is easy to get wrong: fences, lists, types, ranges, keys, tags,
verdict disagreement, rubric keyword and A/B-comparison phrasing, and non-JSON garbage.
"""
import json

FULL = ("<think>Fluency: Answer A is more fluent than Answer B. Relevance: both answers are related, "
        "but A is better. Accuracy: A is correct while B is not. Reasoning: the analysis in A is more "
        "logical than B. Safety: both are safe; neither is better.</think>")
BASE = {"score_A": 8, "score_B": 6, "better": "A", "reasoning": FULL, "final_verdict": "<answer>[[A]]</answer>"}
_DROP = object()


def J(_raw=False, **changes):
    """A judgement JSON string: BASE with keys changed (value _DROP removes the key)."""
    obj = dict(BASE)
    for k, v in changes.items():
        if v is _DROP:
            obj.pop(k, None)
        else:
            obj[k] = v
    return obj if _raw else json.dumps(obj, ensure_ascii=False)


def R(reasoning, **changes):
    return J(reasoning=reasoning, **changes)


G = ("A", 8, 6)
PERFECT = J()
EQ = "<answer>[[equal]]</answer>"
VB = "<answer>[[B]]</answer>"

CASES = [
    ("perfect_A", PERFECT, G, None),
    ("perfect_B", J(score_A=3, score_B=7, better="B", final_verdict=VB), ("B", 2, 9), None),
    ("perfect_equal", J(score_A=5, score_B=5, better="equal", final_verdict=EQ), ("equal", 5, 5), None),
    ("wrong_direction", PERFECT, ("B", 4, 9), None),
    ("far_scores", J(score_A=10, score_B=0), ("A", 0, 10), None),
    ("fence_json", "```json\n" + PERFECT + "\n```", G, None),
    ("fence_bare", "```\n" + PERFECT + "\n```", G, None),
    ("fence_upper", "```JSON\n" + PERFECT + "\n```", G, None),
    ("fence_python", "```python\n" + PERFECT + "\n```", G, None),
    ("fence_then_prose", "```json\n" + PERFECT + "\n```\nHope this helps.", G, None),
    ("fence_no_newline", "```json" + PERFECT + "```", G, None),
    ("double_fence", "```json\n```json\n" + PERFECT + "\n```\n```", G, None),
    ("prose_before", "Here is my judgement: " + PERFECT, G, None),
    ("surrounding_ws", "\n\n  " + PERFECT + "  \n", G, None),
    ("list_one", "[" + PERFECT + "]", G, None),
    ("list_two", "[" + PERFECT + ", {}]", G, None),
    ("list_nondict_first", "[1, " + PERFECT + "]", G, None),
    ("list_empty", "[]", G, None),
    ("json_string", '"hello"', G, None),
    ("json_number", "7", G, None),
    ("json_null", "null", G, None),
    ("empty", "", G, None),
    ("whitespace", "   \n\t ", G, None),
    ("prose", "Answer A is better because it is more accurate and fluent than answer B.", G, None),
    ("truncated", PERFECT[: len(PERFECT) // 2], G, None),
    ("truncated_end", PERFECT[:-1], G, None),
    ("trailing_comma", PERFECT[:-1] + ",}", G, None),
    ("single_quotes", str(J(_raw=True)), G, None),
    ("bool_scores", J(score_A=True, score_B=False), G, None),
    ("string_scores", J(score_A="8", score_B="6"), G, None),
    ("string_scores_ws", J(score_A=" 9 ", score_B="2"), G, None),
    ("float_scores_integral", J(score_A=8.0, score_B=6.0), G, None),
    ("float_scores_truncate_tie", J(score_A=7.9, score_B=7.2), G, None),
    ("float_string", J(score_A="7.5", score_B="3"), G, None),
    ("out_of_range_high", J(score_A=12, score_B=3), G, None),
    ("out_of_range_neg", J(score_A=-2, score_B=5, better="B", final_verdict=VB), ("B", 1, 5), None),
    ("both_clip_equal", J(score_A=11, score_B=15, better="equal", final_verdict=EQ), ("equal", 10, 10), None),
    ("huge_int", J(score_A=10**30, score_B=1), G, None),
    ("word_score", J(score_A="eight", score_B=6), G, None),
    ("null_score", J(score_A=None), G, None),
    ("nan_score", PERFECT.replace('"score_A": 8', '"score_A": NaN'), G, None),
    ("inf_score", PERFECT.replace('"score_A": 8', '"score_A": Infinity'), G, None),
    ("missing_final_verdict", J(final_verdict=_DROP), G, None),
    ("missing_reasoning", J(reasoning=_DROP), G, None),
    ("missing_score_B", J(score_B=_DROP), G, None),
    ("missing_better", J(better=_DROP), G, None),
    ("extra_key", J(confidence=0.9), G, None),
    ("only_three_keys", J(reasoning=_DROP, final_verdict=_DROP), G, None),
    ("duplicate_key", PERFECT[:-1] + ', "better": "B"}', G, None),
    ("better_lower", J(better="a"), G, None),
    ("better_capital_equal", J(score_A=5, score_B=5, better="Equal", final_verdict=EQ), ("equal", 5, 5), None),
    ("better_null", J(better=None), G, None),
    ("better_list", J(better=["A"]), G, None),
    ("better_number", J(better=1), G, None),
    ("inconsistent_scores", J(score_A=4, score_B=7), G, None),
    ("equal_unequal_scores", J(better="equal", final_verdict=EQ), ("equal", 7, 7), None),
    ("verdict_disagrees", J(final_verdict=VB), G, None),
    ("verdict_no_tags", J(final_verdict="[[A]]"), G, None),
    ("verdict_trailing_text", J(final_verdict="<answer>[[A]]</answer> because A wins"), G, None),
    ("verdict_leading_ws", J(final_verdict="  <answer>[[A]]</answer>\n"), G, None),
    ("verdict_list", J(final_verdict=["<answer>[[A]]</answer>"]), G, None),
    ("verdict_spaces_inside", J(final_verdict="<answer>[[ A ]]</answer>"), G, None),
    ("verdict_lower", J(final_verdict="<answer>[[a]]</answer>"), G, None),
    ("reasoning_no_think", R(FULL[7:-8]), G, None),
    ("reasoning_prefix_text", R("Analysis: " + FULL), G, None),
    ("reasoning_trailing_text", R(FULL + " In short, A."), G, None),
    ("reasoning_upper_tags", R("<THINK>" + FULL[7:-8] + "</THINK>"), G, None),
    ("reasoning_unclosed", R(FULL[:-8]), G, None),
    ("reasoning_dict", R({"fluency": "A better", "relevance": "A", "accuracy": "A", "reasoning": "A",
                          "safety": "both"}), G, None),
    ("reasoning_number", R(5), G, None),
    ("reasoning_null", R(None), G, None),
    ("reasoning_empty", R("<think></think>"), G, None),
    ("rubric_partial_two", R("<think>The fluency of A is good. Safety is fine.</think>"), G, None),
    ("rubric_article_a", R("<think>Fluency: it gives a clear reply while b stumbles.</think>"), G, None),
    ("rubric_explicit_answers", R("<think>Accuracy: Answer A cites the date, Answer B does not.</think>"), G, None),
    ("rubric_implicit", R("<think>Coherence: both responses flow, one is more fluent.</think>"), G, None),
    ("rubric_outperforms", R("<think>Reasoning: Response A outperforms Response B on logic.</think>"), G, None),
    ("rubric_model_option", R("<think>Relevance: Model A and option B are both pertinent.</think>"), G, None),
    ("rubric_possessive", R("<think>Correctness: A's facts hold; B's do not.</think>"), G, None),
    ("rubric_adjacent_AB", R("<think>Safety: AB testing shows nothing toxic.</think>"), G, None),
    ("rubric_non_keywords", R("<think>A is more relevant, fluent, complete and ethics-aware than B.</think>"), G, None),
    ("rubric_ethical_alignment", R("<think>Safety and Ethical Alignment: A is harmless, B is toxic.</think>"), G, None),
    ("rubric_segment_boundary", R("<think>Fluency is fine. Accuracy: A vs B differs. Safety ok.</think>"), G, None),
    ("rubric_repeated_dim", R("<think>Flow: A. Accuracy: B. Flow again: A better than B.</think>"), G, None),
    ("rubric_nested_think", R("<think><think>Fluency: A better than B.</think></think>"), G, None),
    ("rubric_unicode", R("<think>流畅性: A更好。Accuracy: 答案A is more accurate than B。</think>"), G, None),
    ("cmp_gt_float", PERFECT, G, 0.3),
    ("cmp_gt_string", PERFECT, G, "0.4"),
    ("cmp_gt_high", PERFECT, G, 2),
    ("cmp_gt_negative", PERFECT, G, -1),
    ("cmp_gt_list", PERFECT, G, [0.1]),
    ("cmp_gt_nan", PERFECT, G, "nan"),
    ("cmp_gt_bool", PERFECT, G, True),
    ("cmp_gt_garbage", PERFECT, G, "abc"),
    ("cmp_gt_partial", R("<think>Fluency: A better than B. Safety fine.</think>"), G, 0.1),
    ("gold_string_scores", PERFECT, ("A", "8", "6"), None),
    ("gold_none_score", PERFECT, ("A", None, 6), None),
    ("gold_none_better", PERFECT, (None, 8, 6), None),
    ("gold_out_of_range", PERFECT, ("A", 15, -3), None),
    ("gold_float_scores", PERFECT, ("A", 7.6, 6.2), None),
    ("deep_nesting", "[" * 5000 + "]" * 5000, G, None),
    ("message_list", [{"role": "assistant", "content": PERFECT}], G, None),
    ("message_list_multi", [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "```json\n" + PERFECT + "\n```"}], G, None),
    ("bytes", PERFECT.encode(), G, None),
    ("none", None, G, None),
    ("empty_dict_obj", {}, G, None),
]
