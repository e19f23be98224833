"""`omnirrm_jax.reward(...)`: the judge's scalar preference for other trainers, with no files and no generation.

    import omnirrm_jax
    judge = omnirrm_jax.load_judge("/ckpt/omni-rrm-7b")             # (model, config, tokenizer), once
    scores = omnirrm_jax.reward(["What colour is the car?"] * 2, ["Red.", "Blue."], ["Blue.", "Red."],
                                media=[{"images": ["car.jpg"]}] * 2, judge=judge)
    # scores: float32 (2,), P(A) - P(B) in [-1, 1]; > 0 prefers responses_a

Each pair is the reference's Best-of-N comparison prompt (`bon_mmmu` for images and text, `bon_videomme` for video,
`bon_avqa` for audio; or `template=`), with the reply's opening `{"better": "` teacher-forced: P(A), P(B), P(equal)
are read at the verdict token in one jitted pass per batch (prefill + two short chunks, `eval.verdict`), the same
numbers `eval.verdict.verdict_probabilities` gives for a judgement that wrote that opening. `swap=True` also judges
(B, A) and returns (r_AB - r_BA) / 2, free of the judge's position bias (twice the work).

Batches have bucketed static shapes, so a training loop that calls this every step compiles a few programs, not one
per call. Media are paths (resolved under `media_root`) and are decoded on the host with the reference's inference
limits.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _template(media: dict) -> str:
    if media.get("audios"):
        return "bon_avqa"
    return "bon_videomme" if media.get("videos") else "bon_mmmu"


def reward(prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], *,
           media: Sequence[dict | None] | None = None, judge: Any, template: str | None = None, swap: bool = False,
           batch_size: int = 8, media_root: str | None = None, max_length: int = 8192, return_probs: bool = False):
    """Scalar judge rewards for a batch of (prompt, response A, response B).

    Args:
      prompts, responses_a, responses_b: equal-length sequences of strings.
      media: per pair None or {"images"|"videos"|"audios": [paths]} (relative paths resolve under `media_root`,
        default the working directory).
      judge: (model, config, tokenizer) as `omnirrm_jax.load_judge` returns, or a checkpoint path (loaded each
        call: pass the tuple in a loop).
      template: a reference template name for every pair (default: by media, see the module docstring).
      swap: average with the (B, A) order, mapped back.
      batch_size: prompts per device batch (a swapped pair is two).
      return_probs: also return the (n, 3) array of P(A), P(B), P(equal) (order (A, B); with swap, the mean of both
        orders mapped back).
    Returns:
      float32 (n,) scores P(A) - P(B), or (scores, probs) with return_probs.
    """
    from data_prep.rows import RowOptions
    from omnirrm_jax.eval.reward import forced_verdicts
    from omnirrm_jax.data.media import MediaConfig
    from omnirrm_jax.eval import pairs
    from omnirrm_jax.eval.benchmarks import INFERENCE_MEDIA_ENV
    from omnirrm_jax.eval.verdict import combine_orders
    from omnirrm_jax.rubric import prompts as P

    n = len(prompts)
    if not (len(responses_a) == len(responses_b) == n) or (media is not None and len(media) != n):
        raise ValueError(f"reward: {n} prompts, {len(responses_a)} responses_a, {len(responses_b)} responses_b"
                         + ("" if media is None else f", {len(media)} media") + ": they must be equal")
    if isinstance(judge, str):
        from omnirrm_jax.eval.judge_runner import load_judge

        judge = load_judge(judge)
    model, cfg, tok = judge
    import os

    root = os.path.abspath(media_root or os.getcwd())
    opts = RowOptions(media_root=os.sep, media=MediaConfig.from_env(dict(INFERENCE_MEDIA_ENV)))
    orders = ("AB", "BA") if swap else ("AB",)
    exs = []
    for i in range(n):
        m = {k: [os.path.join(root, p) for p in ([v] if isinstance(v, str) else v)]
             for k, v in ((media or [None] * n)[i] or {}).items()}
        name = template or _template(m)
        row = {"question": prompts[i], "answer_a": responses_a[i], "answer_b": responses_b[i], "template": name,
               "modality": "video" if m.get("videos") else "image", **m}
        try:
            pair = pairs.check_pair(row)
            rec = pairs.media_record(pair, P.user_content(name, ""), opts)
            exs += pairs.prompt_examples(rec, [[pairs.user_message(pair, swapped=o == "BA")] for o in orders], i,
                                         tok, cfg, max_length=max_length)
        except pairs.PairError as e:
            raise ValueError(f"reward: pair {i}: {e}") from None
    probs: list = [None] * len(exs)
    order = sorted(range(len(exs)), key=lambda j: int(exs[j]["cost"][0]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = pairs.make_batch([exs[j] for j in idx], batch_size, tok, cfg)
        for j, vp in zip(idx, forced_verdicts(model, tok, batch)):
            probs[j] = vp.probs
    k = len(orders)
    per_pair = [probs[i * k] if k == 1 else combine_orders(probs[i * k], probs[i * k + 1]) for i in range(n)]
    table = np.array([[p["A"], p["B"], p["equal"]] for p in per_pair], np.float32).reshape(n, 3)
    scores = table[:, 0] - table[:, 1]
    return (scores, table) if return_probs else scores
