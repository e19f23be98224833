"""`omnirrm bench serve`: /v1/judge judgements/s and p50/p99 latency at 1/16/64 clients, and the offline judge's

The server (`omnirrm serve`) next to the offline batch judge (`Judge.judge_prepared`, what `omnirrm judge --input`
runs) on the same pairs, same card, same call.

Setup, as the other benchmarks: random weights at the preset's real dimensions (3B by default; bf16 on GPU, fp32 on
CPU), and a synthetic tokenizer - a SentencePiece vocabulary trained on the judge prompts (it spells every prompt;
its token counts are not Qwen's), whose special ids the config takes. Judgements are schema-constrained, so every
one parses and reaches the verdict, and the verdict-probability pass runs as for a trained judge; random weights make
each write a different length, the same on both sides. Each side runs in its own process: the server
(`--side server`, `omnirrm serve`'s own `serve()` with the synthetic model) is driven over localhost HTTP by
asyncio clients; the offline side (`--side offline`) judges the pairs in batches of --max-batch. Both are timed after
an untimed pass over the pairs (the server's at the highest concurrency; with `--warmup none` that pass compiles the
shapes the pairs use, with `--warmup full` the server compiled its whole set before it listened). The two sides
compile at the same time, on the host's cores; the timed passes never overlap (offline first, while the server
idles, then the server).
One client sends `--single-requests` pairs, the other concurrencies all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from omnirrm_jax.cli import Parser

CONCURRENCY = (1, 16, 64)
_WORDS = ("the shape is blue and round", "a deep tone plays", "the answer is seven", "it is pink",
          "the sum of three and four", "a high tone", "the colour of the square", "no, it is five")


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """n text pairs of varied lengths (questions and answers from the tokenizer's corpus words)."""
    rng = np.random.default_rng(seed)

    def text(k):
        return " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), k))

    return [{"question": text(int(rng.integers(1, 4))) + "?", "answer_a": text(int(rng.integers(1, 8))),
             "answer_b": text(int(rng.integers(1, 8)))} for _ in range(n)]


def _corpus() -> list[str]:
    from omnirrm_jax.rubric import format_judgement, prompts

    out = [prompts.user_content(m, prompts.judge_prompt(m, w + "?", w, w)) for m in prompts.MODALITIES for w in _WORDS]
    out += [format_judgement(a, b, "A" if a > b else "B" if b > a else "equal", "Fluency: fine. Accuracy: A.")
            for a in range(11) for b in range(11)]
    return out + list(_WORDS)


def synthetic_judges(preset: str, tok_path: str, args) -> dict:
    """{both_orders: Judge} over a random-weight model at the preset's dims and the synthetic tokenizer."""
    import jax

    from omnirrm_jax.bench.decode import _init_model
    from omnirrm_jax.data.tokenizer import load_tokenizer, thinker_token_ids
    from omnirrm_jax.eval.judge_runner import Judge
    from omnirrm_jax.models import config as C

    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    tok = load_tokenizer(tok_path)
    cfg = C.PRESETS[preset](dtype=dtype, param_dtype=dtype)
    text = dataclasses.replace(cfg.text, vocab_size=max(cfg.text.vocab_size, tok.vocab_size))
    cfg = dataclasses.replace(cfg, text=text, **thinker_token_ids(tok))
    model = _init_model(cfg)
    opts = dict(constrained=True, max_new_tokens=args.new, max_length=args.max_prompt_tokens,
                batch_size=args.max_batch)
    return {False: Judge(model, cfg, tok, **opts), True: Judge(model, cfg, tok, swap=True, **opts)}


# ----------------------------------------------------------------------------------------------------
# The sides (each in its own process)
# ----------------------------------------------------------------------------------------------------

def side_server(args) -> int:
    from omnirrm_jax.commands.serve import add_parser, serve

    judges = synthetic_judges(args.preset, args.tokenizer, args)
    sub = argparse.ArgumentParser().add_subparsers()
    sargs = add_parser(sub).parse_args(["unused", "--port", str(args.port), "--max-batch", str(args.max_batch),
                                        "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "100000",
                                        "--max-prompt-tokens", str(args.max_prompt_tokens),
                                        "--max-new-tokens", str(args.new), "--max-tokens", "16",
                                        "--request-timeout", "3600", "--warmup", args.warmup])
    return serve(judges, sargs, None)


def side_offline(args) -> dict:
    from data_prep.rows import RowOptions

    judge = synthetic_judges(args.preset, args.tokenizer, args)[False]
    opts = RowOptions(media_root=os.sep, media=judge.media)
    pairs = make_pairs(args.requests)
    for group in judge.batches([judge.prepare(i, r, opts) for i, r in enumerate(pairs)]):  # warm pass: compiles
        judge.judge_prepared(group)
    if args.go_file:  # compiled beside the server; timed only once the driver says the card is ours alone
        open(args.go_file + ".ready", "w").close()
        while not os.path.exists(args.go_file):
            time.sleep(0.2)
    t = time.perf_counter()  # prompt building and tokenizing timed too, as every /v1/judge request pays for them
    prepared = [judge.prepare(i, r, opts) for i, r in enumerate(pairs)]
    n = sum(len(judge.judge_prepared(group)) for group in judge.batches(prepared))
    seconds = time.perf_counter() - t
    return {"judgements": n, "seconds": seconds, "judgements_per_s": n / seconds}


# ----------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------

async def drive(url: str, pairs: list[dict], concurrency: int) -> dict:
    """Sends every pair to /v1/judge from `concurrency` clients; judgements/s and latency percentiles."""
    import httpx

    latencies: list[float] = []

    async def client(c, mine):
        for i in mine:
            t = time.perf_counter()
            r = await c.post("/v1/judge", json=pairs[i])
            if r.status_code != 200:
                raise RuntimeError(f"/v1/judge answered {r.status_code}: {r.text[:500]}")
            latencies.append(time.perf_counter() - t)

    t = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(client(c, range(k, len(pairs), concurrency)) for k in range(concurrency)))
    seconds = time.perf_counter() - t
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "judgements": len(lat), "seconds": seconds,
            "judgements_per_s": len(lat) / seconds, "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99))}


def _sub(args, side: str, tmp: str, **extra) -> list[str]:
    argv = [sys.executable, "-m", "omnirrm_jax.cli", "bench", "serve", "--side", side, "--preset", args.preset,
            "--requests", str(args.requests), "--max-batch", str(args.max_batch), "--new", str(args.new),
            "--max-wait-ms", str(args.max_wait_ms), "--max-prompt-tokens", str(args.max_prompt_tokens),
            "--tokenizer", os.path.join(tmp, "tokenizer.model"), "--warmup", args.warmup]
    for k, v in extra.items():
        argv += [f"--{k}", str(v)]
    return argv


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compiles(metrics: str) -> float:
    """The server's count of XLA compilations after its warm-up, from its /metrics text."""
    late = [line for line in metrics.splitlines() if line.startswith("omnirrm_serve_compiles_after_warmup_total")]
    if not late:
        raise RuntimeError("the server's /metrics has no omnirrm_serve_compiles_after_warmup_total")
    return float(late[0].split()[-1])


def _wait_ready(proc: subprocess.Popen, path: str, what: str) -> None:
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited {proc.returncode} before it was ready")
        time.sleep(0.5)


def run_all(args) -> dict:
    """Both sides compile at once (two processes, the host's cores); then the offline side is timed alone, then
    the server at each concurrency. Each result is printed as it comes, so a run cut short still reports."""
    import httpx

    from omnirrm_jax.data.tokenizer import train_sentencepiece

    pairs = make_pairs(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        train_sentencepiece(_corpus(), 1500, os.path.join(tmp, "tokenizer"))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        out, go = os.path.join(tmp, "offline.json"), os.path.join(tmp, "offline.go")
        offline_proc = subprocess.Popen(_sub(args, "offline", tmp, json=out, **{"go-file": go}))
        t0 = time.perf_counter()
        server = subprocess.Popen(_sub(args, "server", tmp, port=port))
        try:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited {server.returncode} before it was healthy")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            ready_s = time.perf_counter() - t0
            # untimed: with --warmup none this is where the used shapes compile (the offline side's warm pass)
            warm = asyncio.run(drive(url, pairs, max(args.concurrency)))
            print(f"server ready after {ready_s:.0f} s, warm pass {warm['seconds']:.0f} s", flush=True)
            _wait_ready(offline_proc, go + ".ready", "offline side")
            open(go, "w").close()
            if offline_proc.wait() != 0:
                raise RuntimeError(f"the offline side exited {offline_proc.returncode}")
            with open(out) as f:
                offline = json.load(f)
            print(f"offline: {json.dumps(offline)}", flush=True)
            compiled_before = _compiles(httpx.get(url + "/metrics", timeout=10).text)
            served = []
            for c in args.concurrency:
                served.append(asyncio.run(drive(url, pairs[:args.single_requests] if c == 1 else pairs, c)))
                print(f"served: {json.dumps(served[-1])}", flush=True)
            metrics = httpx.get(url + "/metrics", timeout=10).text
        finally:
            if offline_proc.poll() is None:
                offline_proc.kill()
            server.send_signal(signal.SIGTERM)
            server.wait(600)
    return {"preset": args.preset, "device": offline["device"], "requests": args.requests,
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "new": args.new,
            "server_ready_s": ready_s, "warm_pass_s": warm["seconds"], "warmup": args.warmup,
            "compiles_after_warmup": _compiles(metrics),
            "compiles_while_timed": _compiles(metrics) - compiled_before,
            "served": served, "offline": offline["offline"]}


def table(result: dict) -> str:
    off = result["offline"]["judgements_per_s"]
    lines = [f"`omnirrm bench serve` on {result['device']}, {result['preset']}, {result['requests']} pairs, "
             f"max batch {result['max_batch']}, constrained judgements of <= {result['new']} tokens; server ready "
             f"after {result['server_ready_s']:.0f} s (--warmup {result['warmup']}), untimed warm pass "
             f"{result['warm_pass_s']:.0f} s, {result['compiles_while_timed']:.0f} compilations while timed",
             "", "| clients | judgements/s | p50 latency (s) | p99 latency (s) | vs offline |", "|---|---|---|---|---|"]
    for s in result["served"]:
        lines.append(f"| {s['concurrency']} | {s['judgements_per_s']:.2f} | {s['p50_s']:.3f} | {s['p99_s']:.3f} | "
                     f"{s['judgements_per_s'] / off:.2f}x |")
    lines.append(f"| offline batch judge | {off:.2f} | - | - | 1.00x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench serve", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--requests", type=int, default=256, help="pairs judged at each concurrency (and offline)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--single-requests", type=int, default=16,
                   help="pairs sent by one client (one at a time: its latency is the point, not the count)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch and the offline batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--new", type=int, default=256, help="judgement length cap (constrained judgements)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--warmup", choices=("full", "none"), default="full",
                   help="the server's --warmup (none: a quick smoke run whose first requests compile)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--side", choices=("all", "server", "offline"), default="all", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--go-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side != "all":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.side == "server":
        return side_server(args)
    if args.side == "offline":
        import jax

        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "offline": side_offline(args)}, f)
        return 0
    result = run_all(args)
    print(table(result), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0
