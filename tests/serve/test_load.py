"""The server under load (slow): no XLA compile after warm-up for text traffic of varied lengths and batch
fills, and a soak of 1,024 requests from 64 concurrent clients mixing good and bad ones: each gets exactly one
answer, the good ones the offline judge's, the bad ones their 4xx."""
import asyncio
import os
import random

import httpx
import pytest

from tests.serve.conftest import assert_close, assert_same_judgement, pair_rows
from tests.serve.server_proc import ServerProc
from tests.serve.test_serve import _bad_requests


@pytest.mark.slow
def test_no_compiles_after_warmup(env, tmp_path):
    s = ServerProc(env, str(tmp_path), "--warmup", "full", "--max-batch", "4", "--max-prompt-tokens", "512",
                   "--max-tokens", "32", "--max-wait-ms", "20")
    try:
        warm = s.metric("omnirrm_serve_compiles_total")
        assert warm > 0 and s.metric("omnirrm_serve_compiles_after_warmup_total") == 0
        text_rows = [r for r in pair_rows(env) if not r.get("images")]
        words = "one two three four five six seven eight nine ten ".split()

        def chat(n_words, **kw):
            return {"messages": [{"role": "user", "content": " ".join(words[i % 10] for i in range(n_words))}], **kw}

        calls = [("/v1/judge", {**r, "both_orders": b}) for r in text_rows for b in (False, True)]
        calls += [("/v1/reward", {"pairs": text_rows[:k], "both_orders": k % 2 == 0}) for k in (1, 2, 3)]
        calls += [("/v1/reward", {"pairs": text_rows * 3})]  # more rows than one batch
        # any temperature / top_p runs the warmed program: they are data of the batch, not constants
        calls += [("/v1/chat/completions", chat(n, max_tokens=m, temperature=t, top_p=p, n=k, stream=st))
                  for n, m, t, p, k, st in [(2, 3, 0, 1.0, 1, False), (60, 16, 0, 1.0, 2, True),
                                            (150, 20, 1.0, 1.0, 1, False), (180, 32, 1.0, 0.9, 3, False),
                                            (5, 17, 0, 1.0, 1, False), (90, 32, 0, 1.0, 4, True),
                                            (40, 16, 0.7, 0.95, 2, False), (70, 32, 1.3, 0.5, 1, True)]]

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=300) as c:
                return await asyncio.gather(*(c.post(p, json=b) for p, b in calls))

        answers = asyncio.run(go())
        assert all(r.status_code == 200 for r in answers), [r.text[:300] for r in answers if r.status_code != 200]
        assert s.metric("omnirrm_serve_compiles_after_warmup_total") == 0, s.log()
        assert s.metric("omnirrm_serve_compiles_total") == warm
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.slow
def test_soak_1024_requests_64_clients(env, offline, tmp_path):
    s = ServerProc(env, str(tmp_path), "--warmup", "none", "--max-batch", "8", "--max-queue", "4096",
                   "--max-prompt-tokens", "1024", "--max-tokens", "32", "--media-root", os.path.dirname(env["image"]))
    rows = pair_rows(env)[:3]  # text pairs (the image pair is covered by test_serve)
    bad = _bad_requests(env)  # each refused before any device work, whatever else the soak sends
    assert bad and all(400 <= b[2] < 500 for b in bad), [b for b in bad if not 400 <= b[2] < 500]
    rng = random.Random(0)
    plan = []
    for i in range(1024):
        kind = i % 4
        if kind == 0:
            j, both = rng.randrange(3), rng.random() < 0.3
            plan.append(("judge", (j, both), "/v1/judge", {**rows[j], "both_orders": both}))
        elif kind == 2:
            plan.append(("bad", bad[rng.randrange(len(bad))], None, None))
        else:
            js = [rng.randrange(3) for _ in range(rng.randint(1, 3))]
            plan.append(("reward", js, "/v1/reward", {"pairs": [rows[j] for j in js]}))
    answers: list = [None] * len(plan)

    async def client(c, mine):
        for i in mine:
            kind, what, path, body = plan[i]
            if kind == "bad":
                path, body = what[0], what[1]
            r = await (c.post(path, content=body, headers={"Content-Type": "application/json"})
                       if isinstance(body, bytes) else c.post(path, json=body))
            assert answers[i] is None
            answers[i] = r

    async def go():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=s.url, timeout=600, limits=limits) as c:
            await asyncio.gather(*(client(c, range(k, len(plan), 64)) for k in range(64)))

    try:
        asyncio.run(go())
        assert all(a is not None for a in answers)
        for (kind, what, _, _), r in zip(plan, answers):
            if kind == "bad":
                assert r.status_code == what[2], (what[0], r.text)
            elif kind == "judge":
                assert r.status_code == 200, r.text
                j, both = what
                want = offline["judge"][j] if both else \
                    {k: v for k, v in offline["judge"][j].items() if k not in ("swap", "combined")}
                assert_same_judgement(r.json(), want)
            else:
                assert r.status_code == 200, r.text
                for got, j in zip(r.json()["rewards"], what):
                    assert_close(got, offline["reward"][j]["reward"])
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
        assert s.metric('omnirrm_serve_requests_total') == len(plan)
    finally:
        assert s.stop() == 0, s.log()
