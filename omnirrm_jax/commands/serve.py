"""`omnirrm serve`: the judge as an HTTP service for RL trainers and data pipelines.

Endpoints: POST /v1/chat/completions (OpenAI-compatible, text/image/video/audio, streaming), POST /v1/judge (one
pair -> the judgement of `omnirrm judge`, its verdict probabilities and reward; both_orders adds the swapped order),
POST /v1/reward (pairs -> scalar rewards, one teacher-forced pass, no generation), GET /health, GET /metrics
(Prometheus). The model is loaded once; requests are batched dynamically (up to --max-batch rows or --max-wait-ms)
at static shapes compiled at start-up (--warmup), so traffic never waits on a compile. A full queue answers 429,
a slow answer 504, a bad request 4xx naming the field. SIGTERM stops accepting, answers what is in flight, exits 0.
Media: data: URLs, or paths under --media-root (nothing else is read). With --api-key-env VAR every endpoint but
/health needs `Authorization: Bearer $VAR`.
"""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._model import DTYPES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the judge over HTTP (OpenAI chat, /v1/judge, /v1/reward)",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="HF thinker dir, Orbax dir, or an sft/grpo run's workdir (as `omnirrm judge`)")
    p.add_argument("--lora", help="PEFT / ms-swift LoRA adapter dir merged into an HF checkpoint")
    p.add_argument("--tokenizer", help="SentencePiece .model file or HF tokenizer dir (default: the checkpoint dir)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter/compute dtype")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", metavar="VAR", help="require `Authorization: Bearer <key>`, the key read from "
                                                         "this environment variable (never logged)")
    p.add_argument("--media-root", help="local media paths in requests must lie under this dir (default: only "
                                        "data: URLs are accepted)")
    p.add_argument("--max-batch", type=int, default=8, help="rows per device batch (a both_orders pair is two)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=256, help="waiting jobs beyond this are refused with 429")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="larger request bodies are refused (413)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds until a request answers 504")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longer prompts are refused (400)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="judgement length cap (/v1/judge)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the largest chat max_tokens accepted")
    p.add_argument("--constrained", action="store_true", help="schema-constrained judgements (always parse)")
    p.add_argument("--verdict-field", choices=("better", "final_verdict"), default="better",
                   help="where verdict probabilities are read (see omnirrm_jax/eval/verdict.py)")
    p.add_argument("--media-limits", choices=("inference", "sft"), default="inference",
                   help="image/video limits, as `omnirrm judge --media-limits`")
    p.add_argument("--warmup", choices=("full", "none"), default="full",
                   help="compile every text shape before serving (none: compile on first use)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent XLA compilation cache: a restarted server reads its compiled shapes back instead "
                        "of compiling them again (default: $OMNIRRM_COMPILE_CACHE or ~/.cache/omnirrm/jax; none: off)")
    p.add_argument("--model-name", default="omnirrm", help="the `model` the chat endpoint reports")
    p.add_argument("--access-log", action="store_true", help="log every request line")
    return p


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from omnirrm_jax.commands._model import load_judge_or_run
    from omnirrm_jax.eval.judge_runner import Judge, UsageError

    if args.max_batch < 2:
        raise UsageError(f"--max-batch {args.max_batch}: at least 2 (a both_orders pair takes two rows)")
    for flag in ("max_queue", "max_prompt_tokens", "max_new_tokens", "max_tokens"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.request_timeout <= 0 or args.max_wait_ms < 0 or args.max_body_mb <= 0:
        raise UsageError("--request-timeout and --max-body-mb must be positive and --max-wait-ms not negative")
    if args.media_root and not os.path.isdir(args.media_root):
        raise UsageError(f"--media-root {args.media_root} is not a directory")
    from omnirrm_jax import compile_cache

    cache = compile_cache.enable(args.compile_cache or compile_cache.default_dir())
    logging.getLogger("omnirrm_jax.serve").info("persistent compilation cache: %s", cache or "off")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    model, cfg, tok = load_judge_or_run(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer, dtype=args.dtype)
    opts = dict(constrained=args.constrained, max_new_tokens=args.max_new_tokens, max_length=args.max_prompt_tokens,
                batch_size=args.max_batch, field=args.verdict_field, media_limits=args.media_limits)
    judges = {False: Judge(model, cfg, tok, **opts), True: Judge(model, cfg, tok, swap=True, **opts)}
    return serve(judges, args, api_key)


def serve(judges: dict, args: argparse.Namespace, api_key: str | None) -> int:
    """Warms up, then serves until SIGTERM/SIGINT; returns 0 once drained."""
    import logging

    import uvicorn

    from omnirrm_jax.serve.app import ServerState, create_app
    from omnirrm_jax.serve.engine import Engine
    from omnirrm_jax.serve.inputs import Inputs
    from omnirrm_jax.serve.metrics import Metrics
    from omnirrm_jax.serve.runner import Runner
    from omnirrm_jax.serve.schemas import ChatRequest
    from omnirrm_jax.serve.server import Server

    log = logging.getLogger("omnirrm_jax.serve")
    engine_ref: list = []
    metrics = Metrics(queue_depth=lambda: engine_ref[0].depth if engine_ref else 0)
    runner = Runner(judges[False], max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                    metrics=metrics)
    inputs = Inputs(judges, media_root=args.media_root, max_prompt_tokens=args.max_prompt_tokens)
    seconds = 0.0
    if args.warmup == "full":
        log.info("warm-up: compiling %d prompt lengths x (judge, reward, chat) at batch %d", len(runner.lengths),
                 args.max_batch)
        example = inputs.chat(ChatRequest(messages=[{"role": "user", "content": "Hi"}]))
        seconds = runner.warm_up(example)
        log.info("warm-up done in %.0f s", seconds)
    metrics.warmed_up(seconds)
    engine = Engine(runner.run, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000,
                    max_queue=args.max_queue, metrics=metrics).start()
    engine_ref.append(engine)
    state = ServerState(inputs=inputs, engine=engine, metrics=metrics, model_name=args.model_name,
                        max_tokens=args.max_tokens, request_timeout=args.request_timeout, chat_len=runner.chat_len,
                        api_key=api_key, max_body_bytes=int(args.max_body_mb * (1 << 20)))
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, access_log=args.access_log,
                            timeout_graceful_shutdown=args.request_timeout + 5, log_config=None)
    server = Server(config)
    log.info("serving on http://%s:%d (max batch %d, max wait %g ms, queue %d)", args.host, args.port,
             args.max_batch, args.max_wait_ms, args.max_queue)
    server.run()
    engine.stop()
    metrics.close()
    log.info("stopped")
    return 0
