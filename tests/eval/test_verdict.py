"""Verdict probabilities: the label spellings and the token boundary (`locate`), the teacher-forced log-probs
against a direct transformers forward on a tiny random thinker (image and audio prompts, both answer orders,
batched with padding), normalisation, and the position-bias helpers."""
import math

import numpy as np
import pytest

from omnirrm_jax.eval import verdict as V
from omnirrm_jax.rubric import format_judgement
from tests.eval.judge_env import judge_env

JUDGEMENT = format_judgement(7, 3, "A", "Fluency: A flows. Accuracy: B is wrong.")


class Toy:
    """A tokenizer over a fixed piece list (greedy longest match), to place token boundaries by hand."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.vocab_size = len(self.pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text):
        out = []
        while text:
            i = max((i for i, p in enumerate(self.pieces) if text.startswith(p)), key=lambda i: len(self.pieces[i]))
            out.append(i)
            text = text[len(self.pieces[i]):]
        return out


def test_locate_conditions_on_whole_tokens_and_spells_the_gap():
    # '": "A' spans the end of the key and the label: condition on what comes before it, score '": "' + label
    tok = Toy(['{"better', '": "A', '": "', "A", "B", "equ", "al", '"', "}", " x"])
    ids = tok.encode('{"better": "A"}')
    assert [tok.pieces[i] for i in ids] == ['{"better', '": "A', '"', "}"]
    site = V.locate(tok, ids, "better")
    assert site.prefix == (0,)
    assert [tok.decode(c) for c in site.candidates] == ['": "A', '": "B', '": "equal']
    assert site.candidates[2] == (2, 5, 6)  # multi-token spelling
    assert V.locate(tok, tok.encode('{"better" x'), "better") is None
    with pytest.raises(ValueError, match="unknown verdict field"):
        V.locate(tok, ids, "score_A")


def test_locate_fields_skip_escaped_keys_in_the_rationale():
    text = format_judgement(2, 9, "B", 'I would write \\"better\\": \\"A\\" and "final_verdict": "<answer>[[A]]" here')
    tok = Toy(sorted(set(text + "equal")))  # one character per token
    ids = tok.encode(text)
    better = V.locate(tok, ids, "better")
    assert tok.decode(better.prefix).endswith('"score_B": 9, "better": "')
    final = V.locate(tok, ids, "final_verdict")
    assert tok.decode(final.prefix).endswith('"final_verdict": "<answer>[[') and len(final.prefix) > len(text) - 30


def test_to_probs_normalises_and_reward():
    p = V.to_probs([math.log(0.2), math.log(0.1), math.log(0.1)], "better")
    assert math.isclose(sum(p.probs.values()), 1.0) and math.isclose(p.mass, 0.4)
    assert math.isclose(p.probs["A"], 0.5) and math.isclose(p.reward, 0.25) and p.verdict == "A"
    p = V.to_probs([-1e4, -1e4 - 50, -1e4 - 60], "better")  # tiny mass: still a distribution
    assert math.isclose(sum(p.probs.values()), 1.0) and p.probs["A"] > 0.999


def test_swap_helpers():
    assert [V.swap_label(v) for v in ("A", "B", "equal", None)] == ["B", "A", "equal", None]
    p_ab = {"A": 0.7, "B": 0.2, "equal": 0.1}
    p_ba = {"A": 0.1, "B": 0.6, "equal": 0.3}  # on the swapped prompt "B" is the original A
    assert V.unswap_probs(p_ba) == {"A": 0.6, "B": 0.1, "equal": 0.3}
    comb = V.combine_orders(p_ab, p_ba)
    assert comb == pytest.approx({"A": 0.65, "B": 0.15, "equal": 0.2}) and math.isclose(sum(comb.values()), 1.0)
    assert V.swap_consistency([("A", "B"), ("A", "A"), ("equal", "equal"), (None, "A")]) == (2 / 3, 3)
    assert V.swap_consistency([(None, None)]) == (None, 0)


# ----------------------------------------------------------------------------------------------------
# Against transformers
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_prep.rows import RowOptions
    from omnirrm_jax.eval import pairs
    from omnirrm_jax.models import params as P

    env = judge_env(str(tmp_path_factory.getbasetemp() / "judge_env"))
    model, cfg = P.load_hf(env["hf_dir"])
    tok = env["tok"]
    rows = [{"question": "What colour is the shape?", "answer_a": "blue", "answer_b": "pink", "images": env["image"]},
            {"answer_a": "high", "answer_b": "deep", "audios": env["audio"]}]
    prepared = [pairs.prepare_pair(pairs.check_pair(r), i, tok, cfg, RowOptions(media_root="/"), swap=True,
                                   max_length=4096) for i, r in enumerate(rows)]
    exs = [e for p in prepared for e in p.examples]
    return env, model, cfg, tok, exs, pairs.make_batch(exs, 6, tok, cfg)


def _hf_label_logprobs(hf, ex, site):
    """Summed log-probs of each label spelling from a plain HF forward over prompt + prefix + label."""
    import torch

    out = []
    for cand in site.candidates:
        ids = list(ex["input_ids"]) + list(site.prefix) + list(cand)
        kw = {}
        if ex["pixel_values"] is not None:
            kw.update(pixel_values=torch.tensor(ex["pixel_values"]), image_grid_thw=torch.tensor(ex["image_grid"]))
        if ex["audio_features"] is not None:
            f = ex["audio_features"]
            kw.update(input_features=torch.tensor(f[None]), feature_attention_mask=torch.ones(1, f.shape[1],
                                                                                           dtype=torch.long))
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        **kw).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        n = len(ids) - len(cand)
        out.append(sum(float(logp[n - 1 + j, t]) for j, t in enumerate(cand)))
    return np.array(out)


@pytest.mark.slow
def test_label_logprobs_equal_hf_forward(setup):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    env, model, cfg, tok, exs, batch = setup
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(env["hf_dir"], attn_implementation="eager").eval()
    judged = [tok.encode(JUDGEMENT), tok.encode(format_judgement(1, 8, "B", "Short.")),
              tok.encode('{"score_A": 3'), tok.encode(format_judgement(5, 5, "equal", "Safety: both safe, " * 4)),
              None, None]  # the third never reaches a verdict; the last two are padding rows
    for field, hf_rows in (("better", (0, 1, 3)), ("final_verdict", (1, 3))):
        sites = [None if g is None else V.locate(tok, g, field) for g in judged]
        assert sites[2] is None and all(sites[i] is not None for i in (0, 1, 3))
        lp = V.candidate_logprobs(model, batch, sites, min_prefix=128)  # one chunk shape for both fields
        assert np.isnan(lp[[2, 4, 5]]).all() and np.isfinite(lp[[0, 1, 3]]).all()
        for b in hf_rows:
            want = _hf_label_logprobs(hf, exs[b], sites[b])
            np.testing.assert_allclose(lp[b], want, rtol=2e-4, atol=2e-4, err_msg=f"{field} row {b}")
        probs = V.verdict_probabilities(model, tok, batch, judged, field=field, min_prefix=128)
        assert [p is None for p in probs] == [False, False, True, False, True, True]
        for b in (0, 1, 3):
            assert math.isclose(sum(probs[b].probs.values()), 1.0, rel_tol=1e-9) and 0 < probs[b].mass <= 1
            np.testing.assert_allclose([probs[b].logprobs[v] for v in ("A", "B", "equal")], lp[b], rtol=1e-6)
