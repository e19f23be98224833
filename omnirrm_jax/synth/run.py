"""`omnirrm synth`: the stages in order, each resumable from what it left under `out_dir`.

  prompts.jsonl, bad_inputs.jsonl   stage 1, rewritten each run (cheap and deterministic)
  candidates.jsonl                  stage 2, append-only: {id, model, text | error}
  pair_order.json                   each pair's A/B order, kept across runs (a pair's order is decided once)
  teacher_cache.jsonl               stage 3, append-only: one row per answered (pair, teacher, prompt hash)
  sft.jsonl, grpo.jsonl, rejected.jsonl, synth_report.json   stages 4-5, rewritten from the two logs each run

A rerun (after a kill, a budget stop, or with more sources) pays only for what is missing; rows already in the two
logs are never dropped. Pairs whose two answers are identical are not sent to the teachers (a tie either way), nor
pairs whose answer holds a literal media tag (`<image>`: the training row would read it as a media slot).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from typing import Callable


from omnirrm_jax.errors import UserError
from omnirrm_jax.synth import consensus as C
from omnirrm_jax.synth import output as O
from omnirrm_jax.synth.candidates import done_answers, write_candidates
from omnirrm_jax.synth.config import SynthConfig
from omnirrm_jax.synth.sources import media_tag, read_prompts
from omnirrm_jax.synth.store import jsonl_text, write_atomic
from omnirrm_jax.synth.teacher import annotate, read_cache

log = logging.getLogger(__name__)


def _bar(desc: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=True)


def order_pairs(pairs: list[dict], seed: int, known: dict[str, bool] | None = None) -> dict[str, bool]:
    """Sets each pair's `strong_first` (the strong writer's answer shown as A); returns {pair id: strong_first}.

    A pair in `known` (the orders of earlier runs, `pair_order.json`) keeps its order, so its prompt hash and cached
    teacher replies stay valid when sources are added or caps change. New pairs, taken in an order hashed from
    (seed, id), fill each modality toward half strong-first: labels balanced, and the same choice on every run."""
    known = dict(known or {})
    by_mod = collections.defaultdict(list)
    for p in pairs:
        by_mod[p["modality"]].append(p)
    for group in by_mod.values():
        first = sum(known[p["id"]] for p in group if p["id"] in known)
        second = sum(1 for p in group if p["id"] in known) - first
        new = sorted((p for p in group if p["id"] not in known),
                     key=lambda p: hashlib.sha256(f"{seed}|{p['id']}".encode()).hexdigest())
        for p in new:
            known[p["id"]] = first < second or (first == second and
                                                 hashlib.sha256(f"{seed}|{p['id']}".encode()).digest()[0] & 1 == 1)
            first, second = first + known[p["id"]], second + (not known[p["id"]])
        for p in group:
            p["strong_first"] = known[p["id"]]
    return known


def make_pairs(prompts, answers: dict, strong: str, weak: str, seed: int,
               known: dict[str, bool] | None = None) -> tuple[list[dict], dict, dict]:
    """Prompts with both answers -> (pairs in A/B order, counts of the prompts left out by reason, the orders of
    every pair decided so far: `known` plus the new ones)."""
    pairs, skipped = [], collections.Counter()
    for p in prompts:
        s, w = answers.get((p.id, strong)), answers.get((p.id, weak))
        if s is None or w is None:
            skipped["no_candidate"] += 1
        elif "error" in s or "error" in w:
            skipped["candidate_error"] += 1
        elif not s["text"].strip() or not w["text"].strip():
            skipped["empty_answer"] += 1
        elif s["text"].strip() == w["text"].strip():
            skipped["identical_answers"] += 1
        elif media_tag(s["text"]) or media_tag(w["text"]):  # `omnirrm prep` would refuse the row
            skipped["media_tag_in_answer"] += 1
        else:
            pairs.append({**p.row(), "strong": s["text"], "weak": w["text"]})
    orders = order_pairs(pairs, seed, known)
    for pair in pairs:
        first, second = ("strong", "weak") if pair["strong_first"] else ("weak", "strong")
        pair.update(answer_a=pair[first], answer_b=pair[second],
                    model_a=strong if first == "strong" else weak, model_b=weak if first == "strong" else strong)
    return pairs, dict(skipped), orders


@contextlib.contextmanager
def _only_run(out_dir: str):
    """One `omnirrm synth` per out_dir at a time: two would each ask the teachers for the same missing pairs (paid
    twice) and interleave their appends. An advisory lock, released by the OS however the run ends."""
    import fcntl
    f = open(os.path.join(out_dir, ".synth.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out_dir}: another omnirrm synth is running on it; wait for it (or use another out_dir)")
    except OSError as e:  # a filesystem without locks (some network mounts): say so, run on
        log.warning("%s: cannot lock (%s); make sure no other omnirrm synth uses this out_dir", out_dir, e)
    try:
        yield
    finally:
        f.close()


def run(cfg: SynthConfig, load: Callable | None = None) -> dict:
    """Runs every stage; returns the report (also written to out_dir/synth_report.json). `load(policy)` ->
    (model, config, tokenizer), called only when answers are missing."""
    teachers = tuple(t.resolved() for t in cfg.teachers)  # keys checked now, not after hours of candidates
    os.makedirs(cfg.out_dir, exist_ok=True)
    with _only_run(cfg.out_dir):
        return _run(cfg, teachers, load)


def _run(cfg: SynthConfig, teachers: tuple, load: Callable | None) -> dict:
    t0 = time.perf_counter()
    out = cfg.out_dir
    # 1. prompts
    res = read_prompts(cfg.sources, cfg.media_root)
    write_atomic(os.path.join(out, "prompts.jsonl"), jsonl_text(p.row() for p in res.prompts))
    write_atomic(os.path.join(out, "bad_inputs.jsonl"), jsonl_text(res.bad))
    log.info("prompts: %d kept from %d sources; bad rows %s", len(res.prompts), len(cfg.sources), res.bad_by_reason)
    # 2. candidates
    cand_path = os.path.join(out, "candidates.jsonl")
    with _bar("candidates", 2 * len(res.prompts)) as bar:
        ids, labels = {p.id for p in res.prompts}, {cfg.candidates.strong.label, cfg.candidates.weak.label}
        bar.update(sum(1 for pid, label in done_answers(cand_path) if pid in ids and label in labels))

        def no_model(policy):
            raise RuntimeError(f"answers of {policy.label!r} are missing and no model loader was given")
        cand_counts = write_candidates(res.prompts, cfg.candidates, cand_path, cfg.media_root, load or no_model,
                                       progress=bar)
    strong, weak = cfg.candidates.strong.label, cfg.candidates.weak.label
    order_path = os.path.join(out, "pair_order.json")
    known = json.load(open(order_path)) if os.path.isfile(order_path) else {}
    pairs, skipped, orders = make_pairs(res.prompts, done_answers(cand_path), strong, weak, cfg.seed, known)
    write_atomic(order_path, json.dumps(orders, sort_keys=True) + "\n")
    # 3. teachers
    cache_path = os.path.join(out, "teacher_cache.jsonl")
    with _bar("teachers", 0) as bar:
        t_stats = annotate(pairs, teachers, cfg.teacher_run, cache_path, cfg.media_root, progress=bar)
    cache = read_cache(cache_path)
    # 4. consensus
    names = tuple(t.name for t in teachers)
    cons = C.consensus(pairs, cache, names, cfg.rejected_sample)
    # 5. output
    chosen = cfg.sft_teacher or names[0]
    sft, grpo = [], []
    for pair, judgements in cons.kept:
        s, g = O.rows(pair, judgements[chosen])
        sft.append(s)
        grpo.append(g)
    write_atomic(os.path.join(out, "sft.jsonl"), jsonl_text(sft))
    write_atomic(os.path.join(out, "grpo.jsonl"), jsonl_text(grpo))
    write_atomic(os.path.join(out, "rejected.jsonl"), jsonl_text(cons.rejected_sample))
    balance = O.label_balance(grpo)
    share = balance.get("all", {}).get("A_share")
    if share is not None and abs(share - 0.5) > 0.1:
        log.warning("labels are unbalanced: A share %.2f of %d kept pairs", share, len(grpo))
    pair_ids = {p["id"] for p in pairs}
    tokens = {n: {"prompt_tokens": 0, "completion_tokens": 0} for n in names}
    for r in cache.values():
        if r.get("pair") in pair_ids and r.get("teacher") in tokens:
            for k in tokens[r["teacher"]]:
                tokens[r["teacher"]][k] += int((r.get("usage") or {}).get(k, 0))
    prices = {t.name: (t.price_input_per_1m, t.price_output_per_1m) for t in teachers}
    run_tokens = {n: {k: t_stats["teachers"][n][k] for k in ("prompt_tokens", "completion_tokens")} for n in names}
    unparseable = collections.Counter(r["reason"] for r in cache.values() if r.get("pair") in pair_ids
                                      and r.get("judgement") is None)
    report = {
        "prompts": {"kept": len(res.prompts), "by_source": res.counts, "bad_by_reason": res.bad_by_reason,
                    "bad_sample": res.bad[:20]},
        "candidates": {"writers": {strong: cfg.candidates.strong.checkpoint, weak: cfg.candidates.weak.checkpoint},
                       "this_run": cand_counts, "pairs": len(pairs), "prompts_skipped": skipped},
        "teachers": {"models": {t.name: t.model for t in teachers}, "this_run": t_stats["teachers"],
                     "requests_this_run": t_stats["requests"], "tokens_this_run": t_stats["tokens"],
                     "unparseable_replies": dict(unparseable),
                     "mended_replies": sum(1 for r in cache.values() if r.get("pair") in pair_ids and r.get("mended")
                                           and r.get("judgement"))},
        "consensus": {"kept": len(cons.kept), "rejected": cons.rejected, "by_modality": cons.by_modality,
                      "rejected_sample": cons.rejected_sample[:5]},
        "output": {"sft": os.path.join(out, "sft.jsonl"), "grpo": os.path.join(out, "grpo.jsonl"), "rows": len(sft),
                   "sft_teacher": chosen, "label_balance": balance, "media_root": cfg.media_root},
        "tokens": {"all_runs": tokens, "this_run": run_tokens},
        "cost_usd": {"all_runs": O.cost(tokens, prices), "this_run": O.cost(run_tokens, prices)},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_atomic(os.path.join(out, "synth_report.json"), __import__("json").dumps(report, indent=1) + "\n")
    return report
