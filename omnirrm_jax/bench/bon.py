"""`omnirrm bench bon`: Best-of-N candidates ranked per second, the scalar reward next to the reference's elimination.

The workload: Q questions with N candidates each (N = 5, the release's runs per MMMU question), every judge prompt
the MMMU Best-of-N prompt's shape: one image at one of the three sizes of `bench eval` (256, 768 or 1260 image
tokens) plus ~`--text` tokens of prompt, question and the two answers; random weights at real dimensions (7B by
default) and random ids: speed depends on shapes, not values.

* elimination (the reference's selection): N - 1 sequential comparisons per question, each a greedy reply of `--new`
  tokens (the reference's `{"better": "A"}` is about that long; random weights never stop, so every reply runs the
  full length); the Q questions of a round go in batches of B.
* reward: the scalar P(A) - P(B) over every ordered pair (N (N - 1) prompts per question, both orders), one
  teacher-forced pass each (`eval.verdict.candidate_logprobs`: prefill, the 4-token reply opening, the labels), no
  generation.
* reward_ref: the same scalar against a fixed reference answer, 2 (N - 1) prompts per question.
Each is timed over the whole workload after a warm pass that compiles every shape (reported separately as
`first_pass_s`). Prints a markdown table; `--json` writes the numbers.
"""

from __future__ import annotations

import json
import time

import numpy as np

from omnirrm_jax.cli import Parser

STRATEGIES = ("reward", "reward_ref", "elimination")


def make_prompts(cfg, count: int, text: int, seed: int = 0, grids=None) -> list[dict]:
    """count judge prompts: {"ids" (L,), "grid", "pixels"}, image placeholders between vision markers; image sizes
    cycle through `grids` (default: the three of `bench eval`)."""
    from omnirrm_jax.bench.eval import GRIDS

    GRIDS = tuple(grids or GRIDS)
    rng = np.random.default_rng(seed)
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2
    special = (cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id, cfg.vision_start_token_id,
               cfg.vision_end_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id)
    top = min(cfg.text.vocab_size - 20, 20000, *special)
    out = []
    for i in range(count):
        grid = GRIDS[(i // 20) % len(GRIDS)]  # a question's prompts share its image
        n_img = int(np.prod(grid)) // cfg.vision.spatial_merge_size ** 2
        after = int(rng.integers(max(text - 16, 8), text + 16))
        ids = np.concatenate([rng.integers(1, top, 4), [cfg.vision_start_token_id], np.full(n_img, cfg.image_token_id),
                              [cfg.vision_end_token_id], rng.integers(1, top, after)]).astype(np.int32)
        out.append({"ids": ids, "grid": grid,
                    "pixels": rng.standard_normal((int(np.prod(grid)), patch_dim)).astype(np.float32)})
    return out


def _inputs(cfg, group: list[dict], batch: int):
    from omnirrm_jax.bench.eval import _left_pad
    from omnirrm_jax.eval.pairs import seq_bucket
    from omnirrm_jax.models.thinker import prepare_inputs

    group = group + [group[-1]] * (batch - len(group))  # a short last batch keeps the batch shape
    ids, mask = _left_pad(group, seq_bucket(max(len(r["ids"]) for r in group)))
    return prepare_inputs(cfg, ids, mask, pixel_values=np.concatenate([r["pixels"] for r in group]),
                          image_grid_thw=np.array([r["grid"] for r in group]))


def _scalar(cfg, model, prompts: list[dict], batch: int) -> int:
    import jax

    from omnirrm_jax.eval.verdict import VerdictSite, candidate_logprobs

    site = VerdictSite(prefix=(90, 91, 92, 93), candidates=((32,), (33,), (34,)))
    ordered = sorted(prompts, key=lambda r: len(r["ids"]))
    for s in range(0, len(ordered), batch):
        inputs = _inputs(cfg, ordered[s:s + batch], batch)
        jax.block_until_ready(candidate_logprobs(model, inputs, [site] * batch))
    return len(prompts)


def _elimination(cfg, model, prompts: list[list[dict]], batch: int, new: int) -> int:
    """prompts[q][r]: question q's comparison in round r; the rounds run one after another."""
    import jax

    from omnirrm_jax.decoding.sampler import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=new, greedy=True, stop_token_ids=())
    calls = 0
    for r in range(len(prompts[0])):
        round_ = sorted((p[r] for p in prompts), key=lambda x: len(x["ids"]))
        for s in range(0, len(round_), batch):
            out = generate(model, _inputs(cfg, round_[s:s + batch], batch), sampling, jax.random.key(r))
            np.asarray(out.tokens)  # the next round's pair depends on this verdict
            calls += len(round_[s:s + batch])
    return calls


def bench(cfg, model, *, questions: int, n: int, batch: int, new: int, text: int,
          strategies=STRATEGIES, grids=None) -> dict:
    pool = make_prompts(cfg, questions * n * (n - 1), text, grids=grids)
    per_q = {"reward": n * (n - 1), "reward_ref": 2 * (n - 1), "elimination": n - 1}
    out = {}
    for name in strategies:
        k = per_q[name]
        prompts = [pool[q * n * (n - 1) + j] for q in range(questions) for j in range(k)]

        def once(ps=prompts, k=k):
            if name == "elimination":
                return _elimination(cfg, model, [ps[q * k:(q + 1) * k] for q in range(questions)], batch, new)
            return _scalar(cfg, model, ps, batch)

        t = time.perf_counter()
        once()
        first = time.perf_counter() - t
        t = time.perf_counter()
        calls = once()
        seconds = time.perf_counter() - t
        out[name] = {"judge_calls": calls, "seconds": seconds, "candidates_per_s": questions * n / seconds,
                     "questions_per_s": questions / seconds, "first_pass_s": first}
    return out


def _grids(image: str):
    from omnirrm_jax.bench.eval import GRIDS

    return None if image == "mixed" else [GRIDS[("small", "medium", "large").index(image)]]


def table(result: dict) -> str:
    lines = [f"Best-of-N ranking, {result['preset']} on {result['device']}: {result['questions']} questions x N = "
             f"{result['n']}, batch {result['batch']}, images {result.get('image', 'mixed')}", "",
             "| strategy | judge calls | seconds | candidates ranked / s | questions / s | first pass (compile) s |",
             "|---|---|---|---|---|---|"]
    for name, r in result["strategies"].items():
        lines.append(f"| {name} | {r['judge_calls']} | {r['seconds']:.2f} | {r['candidates_per_s']:.2f} | "
                     f"{r['questions_per_s']:.3f} | {r['first_pass_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench bon", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_7b")
    p.add_argument("--questions", type=int, default=16, help="questions in the workload")
    p.add_argument("-n", type=int, default=5, help="candidates per question")
    p.add_argument("--batch", type=int, default=8, help="prompts per device batch")
    p.add_argument("--new", type=int, default=8, help="reply tokens of an elimination comparison")
    p.add_argument("--text", type=int, default=160, help="text tokens of a judge prompt besides the image")
    p.add_argument("--image", choices=("mixed", "small", "medium", "large"), default="mixed",
                   help="image size of every prompt (256 / 768 / 1260 image tokens) or the three in turn; one size "
                        "compiles one program per strategy, the mix one per batch shape")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {', '.join(STRATEGIES)}")
    p.add_argument("--out", "--json", dest="out", default=None, help="also write the results here (JSON)")
    args = p.parse_args(argv)
    names = [s for s in args.strategies.split(",") if s]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or args.n < 2 or args.questions < 1:
        p.error(f"unknown strategy {', '.join(bad)}" if bad else "-n must be >= 2 and --questions >= 1")
    import jax

    from omnirrm_jax.bench.decode import _init_model
    from omnirrm_jax.models import config as C

    cfg = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16")
    result = {"preset": args.preset, "device": jax.devices()[0].device_kind, "questions": args.questions, "n": args.n,
              "batch": args.batch, "new": args.new, "text": args.text, "image": args.image}
    result["strategies"] = bench(cfg, _init_model(cfg), questions=args.questions, n=args.n, batch=args.batch,
                                 new=args.new, text=args.text, strategies=names, grids=_grids(args.image))
    print(table(result), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0
