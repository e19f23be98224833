"""Stage 3 of `omnirrm synth`: two teachers judge each pair over an OpenAI-compatible chat API.

Each (pair, teacher) is one chat request: the reference's annotation prompt of the modality (`rubric/templates/
annotate_*`, from "Omni Preference Construction/*/{doubao,gpt}_example.py"; text pairs, for which the reference
published no annotation script, get its HH-RLHF judge prompt) after the media parts (`media_parts`), at the
reference's temperature 0.2 and 2048 reply tokens. Requests run on one asyncio loop through httpx with at most
`concurrency` in flight; 429, 5xx, timeouts and connection errors are retried with exponential backoff (a
Retry-After header wins, capped); other statuses fail at once. A per-run budget caps HTTP attempts and the tokens the
teachers report; past it no request starts and the pairs left are counted, not lost (a later run continues).

Every answered request is appended to teacher_cache.jsonl (fsync) under (pair, teacher, prompt hash) before
anything else happens, so a killed run resumes without paying twice; the hash covers the prompt text, the media
bytes and the teacher's model and settings, so a changed prompt is asked again. A reply that cannot be mended into
a judgement (`repair`) is cached and counted as unparseable. The key is sent as a Bearer header and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time

from omnirrm_jax.rubric import prompts
from omnirrm_jax.synth.config import TeacherRun, TeacherSpec
from omnirrm_jax.synth.media_parts import media_digest, media_parts
from omnirrm_jax.synth.repair import repair_judgement
from omnirrm_jax.synth.store import AppendLog, read_jsonl

log = logging.getLogger(__name__)
TEMPLATES = {"image": "annotate_image", "video": "annotate_video", "audio": "annotate_audio", "text": "hh_rlhf"}
CRASH_ENV = "OMNIRRM_SYNTH_CRASH_AFTER"   # tests: exit hard after this many cache appends (a kill at a known point)


class TeacherFailure(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class Budget:
    """Per-run caps on HTTP attempts and reported tokens (None: no cap)."""

    def __init__(self, max_requests: int | None, max_tokens: int | None):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = self.tokens = 0

    @property
    def exhausted(self) -> bool:
        return ((self.max_requests is not None and self.requests >= self.max_requests)
                or (self.max_tokens is not None and self.tokens >= self.max_tokens))

    def take_request(self) -> bool:
        if self.exhausted:
            return False
        self.requests += 1
        return True


def prompt_text(pair: dict) -> str:
    """The annotation prompt of a pair (answers in its A/B order)."""
    name = TEMPLATES[pair["modality"]]
    extra = {"media_name": pair["media"]} if pair["media"] else {}
    return prompts.render(name, pair["question"], pair["answer_a"], pair["answer_b"], **extra)


def prompt_hash(pair: dict, spec: TeacherSpec, digest: str | None) -> str:
    """`digest`: the pair's `media_digest` (None for text), read once per pair for every teacher."""
    h = hashlib.sha256(json.dumps([TEMPLATES[pair["modality"]], prompt_text(pair), spec.model, spec.temperature,
                                   spec.max_tokens]).encode())
    if digest:
        h.update(digest.encode())
    return h.hexdigest()[:24]


def cache_key(pair_id: str, teacher: str, phash: str) -> str:
    return f"{pair_id}|{teacher}|{phash}"


def read_cache(path: str) -> dict:
    """key -> cache row, each stored reply mended again by today's `repair_judgement`: a repair fixed later recovers
    the replies already paid for (the stored judgement is derived data). A stricter repair can also drop a reply
    an older version accepted (e.g. `better` and `final_verdict` disagreeing, now "verdict_conflict"); the report's
    counts are always of today's reading."""
    out: dict = {}
    for r in read_jsonl(path):
        if r.get("key") in out:
            continue
        if isinstance(r.get("reply"), str):
            try:
                j, why, mended = repair_judgement(r["reply"])
                r = {**r, "judgement": j, "reason": why, "mended": mended}
            except Exception:  # noqa: BLE001 - keep what was stored
                pass
        out[r.get("key")] = r
    return out


def _usage(raw) -> dict:
    """The reply's token counts; anything that is not a whole number counts 0 (a paid reply is never lost to it)."""
    raw = raw if isinstance(raw, dict) else {}
    out = {}
    for k in ("prompt_tokens", "completion_tokens"):
        try:
            out[k] = max(0, int(raw.get(k) or 0))
        except (TypeError, ValueError):
            out[k] = 0
    return out


async def chat(client, spec: TeacherSpec, run: TeacherRun, messages: list, budget: Budget) -> tuple[str, dict]:
    """One chat completion with retries -> (reply text, usage); raises TeacherFailure."""
    import httpx

    url = spec.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    body = {"model": spec.model, "messages": messages, "temperature": spec.temperature,
            "max_tokens": spec.max_tokens}
    reason = detail = ""
    for attempt in range(run.max_retries + 1):
        if not budget.take_request():
            raise TeacherFailure("budget_exhausted", f"{budget.requests} requests, {budget.tokens} tokens used")
        wait = run.backoff_s * 2 ** attempt
        try:
            r = await client.post(url, json=body, headers=headers, timeout=run.timeout_s)
        except httpx.TimeoutException:
            reason, detail = "timeout", f"no reply within {run.timeout_s} s"
        except httpx.TransportError as e:
            reason, detail = "connection_error", type(e).__name__
        except httpx.HTTPError as e:  # a corrupt body, too many redirects, a bad URL: not worth retrying
            raise TeacherFailure("http_error", f"{type(e).__name__}: {e}"[:200]) from None
        else:
            if r.status_code == 200:
                try:
                    data = r.json()
                    content = data["choices"][0]["message"]["content"]
                    if isinstance(content, list):
                        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                except (ValueError, KeyError, IndexError, TypeError):
                    raise TeacherFailure("bad_response", r.text[:200]) from None
                usage = _usage(data.get("usage"))
                budget.tokens += sum(usage.values())
                return _clean_text(content) if isinstance(content, str) else "", usage
            reason, detail = f"http_{r.status_code}", r.text[:200]
            if r.status_code != 429 and r.status_code < 500:
                raise TeacherFailure(reason, detail)
            try:
                wait = float(r.headers.get("retry-after", wait))
            except ValueError:
                pass
        if attempt < run.max_retries:
            await asyncio.sleep(min(wait, run.max_backoff_s))
    raise TeacherFailure(reason, detail)


def _count_failure(t: dict, pair_id: str, reason: str, detail: str) -> None:
    """One failed (pair, teacher) in the teacher's counts; the first 20 are named in the report."""
    t["failed"][reason] = t["failed"].get(reason, 0) + 1
    if len(t["failed_pairs"]) < 20:
        t["failed_pairs"].append({"pair": pair_id, "reason": reason, "detail": detail[:200]})


def _clean_text(text: str) -> str:
    """A reply as text the cache can write: a lone surrogate (half an emoji, cut by the server) becomes U+FFFD
    instead of failing the UTF-8 write, and with it the run."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


async def _annotate(jobs, run: TeacherRun, cache: AppendLog, budget: Budget, progress, crash_after: int | None,
                    stats: dict) -> None:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    appended = [0]

    async def worker(client):
        while True:
            try:
                key, pair, spec, path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = stats["teachers"][spec.name]
            try:
                if budget.exhausted:
                    raise TeacherFailure("budget_exhausted", "")
                if t["in_a_row"] >= run.max_failures_in_a_row:
                    raise TeacherFailure("teacher_stopped", f"{t['in_a_row']} requests failed in a row")
                parts = await asyncio.to_thread(media_parts, pair["modality"], path, fps=run.video_fps,
                                                max_frames=run.video_max_frames, size=run.frame_size)
                messages = [{"role": "user", "content": parts + [{"type": "text", "text": prompt_text(pair)}]}]
                text, usage = await chat(client, spec, run, messages, budget)
                try:
                    judgement, why, mended = repair_judgement(text)
                except Exception as e:  # noqa: BLE001 - a paid reply is kept (and counted unusable), not lost
                    judgement, why, mended = None, f"repair_error: {type(e).__name__}"[:60], False
            except TeacherFailure as f:
                _count_failure(t, pair["id"], f.reason, f.detail)
                if f.reason not in ("budget_exhausted", "teacher_stopped", "http_400", "http_413", "http_422"):
                    # (a 400/413/422 refuses this one request - content policy, size - not the endpoint)
                    t["in_a_row"] += 1
                    if t["in_a_row"] == run.max_failures_in_a_row:
                        log.warning("teacher %s: %d requests failed in a row (last: %s %s); not asked again this "
                                    "run (teacher_run.max_failures_in_a_row)", spec.name, t["in_a_row"], f.reason,
                                    f.detail[:120])
            except (OSError, ValueError) as e:
                _count_failure(t, pair["id"], "unreadable_media", str(e))
            except Exception as e:  # noqa: BLE001 - one pair's surprise must not abort the run (counted, retried next run)
                _count_failure(t, pair["id"], "internal_error", f"{type(e).__name__}: {e}")
            else:
                cache.append({"key": key, "pair": pair["id"], "teacher": spec.name, "reply": text,
                              "judgement": judgement, "reason": why, "mended": mended, "usage": usage,
                              "time": round(time.time(), 3)})
                t["answered"] += 1
                t["in_a_row"] = 0
                for k, v in usage.items():
                    t[k] += v
                appended[0] += 1
                if crash_after is not None and appended[0] >= crash_after:
                    os._exit(17)
            if progress is not None:
                progress.update(1)

    limits = httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, run.concurrency))))


def annotate(pairs: list[dict], teachers: tuple[TeacherSpec, ...], run: TeacherRun, cache_path: str,
             media_root: str, progress=None) -> dict:
    """Asks every (pair, teacher) missing from the cache. Returns per-teacher counts of this run and the cache:
    {"teachers": {name: {"cached", "answered", "failed": {reason: n}, "failed_pairs", prompt/completion tokens}},
     "requests", "tokens"}; the judgements themselves are read back from the cache (`read_cache`)."""
    from data_prep.rows import Quarantine, RowOptions, resolve_media_path

    cached = read_cache(cache_path)
    crash = os.environ.get(CRASH_ENV)
    stats = {"teachers": {t.name: {"cached": 0, "answered": 0, "failed": {}, "failed_pairs": [],
                                   "prompt_tokens": 0, "completion_tokens": 0, "in_a_row": 0} for t in teachers}}
    jobs = []
    opts = RowOptions(media_root=media_root)
    for pair in pairs:
        try:
            path = resolve_media_path(pair["media"], opts) if pair["media"] else None
            digest = media_digest(path) if path else None
        except (Quarantine, OSError) as e:  # the media went away since stage 1: counted, the run goes on
            for spec in teachers:
                _count_failure(stats["teachers"][spec.name], pair["id"], "unreadable_media",
                               e.detail if isinstance(e, Quarantine) else str(e))
                pair.setdefault("keys", {})[spec.name] = cache_key(pair["id"], spec.name, "unreadable")
            continue
        for spec in teachers:
            key = cache_key(pair["id"], spec.name, prompt_hash(pair, spec, digest))
            pair.setdefault("keys", {})[spec.name] = key
            if key in cached:
                stats["teachers"][spec.name]["cached"] += 1
            else:
                jobs.append((key, pair, spec, path))
    if progress is not None:
        progress.reset(total=len(jobs))
    budget = Budget(run.max_requests, run.max_tokens)
    cache = AppendLog(cache_path)
    try:
        if jobs:
            asyncio.run(_annotate(jobs, run, cache, budget, progress, int(crash) if crash else None, stats))
    finally:
        cache.close()
    stats.update(requests=budget.requests, tokens=budget.tokens)
    return stats
