"""A real OpenAI-compatible teacher for the synth tests: FastAPI + uvicorn in a subprocess on localhost, replying
with scripted judgements and logging every request (model, a hash of its messages, status, part types) to a JSONL
file the test reads.

Verdicts are scripted from the answers in the annotation prompt: the longer answer wins (8 vs 3); an answer holding
TIE makes it "equal" (5 vs 5); SPLIT makes a teacher with `contrary` pick the other one; CONTRA makes a teacher with
`contrary` give scores that contradict its verdict; GARBLE makes a teacher with `contrary` answer prose.
Per model (the request's "model"), a script may set: fail_429 / fail_500 (the first n requests of each prompt get
that status; 429 with Retry-After: 0), slow_s (sleep first), hang (never answer), fenced (```json fence), sloppy
(unquoted keys, trailing comma, single quotes), contrary."""
import argparse
import asyncio
import collections
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

_PATTERNS = [re.compile(r"Candidate A: (.*?)\s*\n\s*Candidate B: (.*?)\s*$", re.S),
             re.compile(r"Model A Answer: (.*?)\nModel B Answer: (.*?)\n\nRespond", re.S),
             re.compile(r"\[Answer A\]: (.*?)\n\s*\[Answer B\]: (.*?)\s*$", re.S)]


def answers(text: str) -> tuple[str, str]:
    for p in _PATTERNS:
        m = p.search(text)
        if m:
            return m.group(1), m.group(2)
    return "", ""


def verdict(a: str, b: str, contrary: bool) -> tuple[str, int, int]:
    if "TIE" in a + b:
        return "equal", 5, 5
    better = "A" if len(a) >= len(b) else "B"
    if contrary and "SPLIT" in a + b:
        better = "B" if better == "A" else "A"
    hi, lo = (8, 3) if not (contrary and "CONTRA" in a + b) else (3, 8)
    return better, (hi if better == "A" else lo), (lo if better == "A" else hi)


def reply_text(text: str, script: dict) -> str:
    a, b = answers(text)
    contrary = script.get("contrary", False)
    if contrary and "GARBLE" in a + b:
        return "I think both answers are fine, really."
    better, sa, sb = verdict(a, b, contrary)
    reasoning = (f"<think>Fluency: A and B are clear. Relevance: both address the question. Accuracy: {better} "
                 f"is more complete. Reasoning: {better} is better grounded. Safety: both are harmless.</think>")
    if script.get("sloppy"):
        return ("{score_A: %d, score_B: %d, 'better': '%s', reasoning: '%s',}"
                % (sa, sb, better, reasoning.replace("'", "")))
    body = json.dumps({"score_A": sa, "score_B": sb, "better": better, "reasoning": reasoning,
                       "final_verdict": f"<answer>[[{better}]]</answer>"})
    return f"Here you go:\n```json\n{body}\n```" if script.get("fenced") else body


def make_app(scripts: dict, log_path: str):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.requests import Request

    app = FastAPI()
    seen: collections.Counter = collections.Counter()
    log = open(log_path, "a", buffering=1)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body.get("model", "")
        script = scripts.get(model, {})
        content = body["messages"][-1]["content"]
        text = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        key = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]
        seen[(model, key)] += 1
        n = seen[(model, key)]
        status = 200
        if n <= script.get("fail_429", 0):
            status = 429
        elif n <= script.get("fail_429", 0) + script.get("fail_500", 0):
            status = 500
        entry = {"model": model, "key": key, "status": status, "n": n, "parts": [p.get("type") for p in content],
                 "auth": request.headers.get("authorization", ""), "t": time.time()}
        if script.get("hang"):
            log.write(json.dumps({**entry, "status": "hang"}) + "\n")
            await asyncio.sleep(3600)
        if script.get("slow_s"):
            await asyncio.sleep(script["slow_s"])
        log.write(json.dumps(entry) + "\n")
        if status == 429:
            return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0"})
        if status == 500:
            return JSONResponse({"error": "boom"}, status_code=500)
        out = reply_text(text, script)
        return {"id": "x", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(out) // 4,
                          "total_tokens": len(text) // 4 + len(out) // 4}}

    @app.get("/health")
    async def health():
        return {"ok": True}

    return app


class FakeTeacher:
    """The server as a subprocess: `url` (ends in /v1), `requests()` the log rows, `stop()`."""

    def __init__(self, tmp: str, scripts: dict):
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = os.path.join(tmp, f"teacher-{self.port}.jsonl")
        script_path = os.path.join(tmp, f"teacher-{self.port}.json")
        with open(script_path, "w") as f:
            json.dump(scripts, f)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.synth.fake_teacher", "--port", str(self.port),
                                      "--script", script_path, "--log", self.log_path], cwd=root,
                                     env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("fake teacher did not start")

    def requests(self) -> list[dict]:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--script", required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    with open(a.script) as f:
        scripts = json.load(f)
    uvicorn.run(make_app(scripts, a.log), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
