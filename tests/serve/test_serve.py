"""`omnirrm serve` end to end: the real server in a subprocess (tiny judge, free localhost port), real HTTP.
The OpenAI client gets chat completions (streamed and not); /v1/judge and /v1/reward give the offline judge's
answers; bad and hostile requests are 4xx naming the field and leave the server healthy; the API key is enforced;
a full queue is 429 with Retry-After, a late answer 504, and jobs whose clients left are never run; SIGTERM under
load answers every in-flight request, then exits 0."""
import asyncio
import base64
import os

import httpx
import pytest

from tests.serve.conftest import KEY, assert_same_judgement, pair_rows, request_body
from tests.serve.server_proc import ServerProc

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    s = ServerProc(env, str(tmp_path_factory.mktemp("srv")), "--warmup", "none", "--max-batch", "8",
                   "--max-prompt-tokens", "1024", "--max-tokens", "32", "--media-root", os.path.dirname(env["image"]),
                   "--api-key-env", "OMNIRRM_TEST_KEY", "--max-body-mb", "0.25",
                   extra_env={"OMNIRRM_TEST_KEY": KEY})
    yield s
    assert s.stop() == 0, s.log()
    assert KEY not in s.log()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
        yield c


def test_openai_client_chat_completion_streamed_and_not(server):
    import openai

    oc = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    done = oc.chat.completions.create(model="omnirrm", messages=msgs, max_tokens=12, temperature=0)
    text = done.choices[0].message.content
    assert isinstance(text, str) and done.choices[0].finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 10
    stream = oc.chat.completions.create(model="omnirrm", messages=msgs, max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: the same completion
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    with open(server_image(server), "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    content = [{"type": "text", "text": "What colour?"}, {"type": "image_url", "image_url": {"url": url}}]
    multi = oc.chat.completions.create(model="omnirrm", max_tokens=4, n=2, seed=3,
                                       messages=[{"role": "user", "content": content}])
    assert len(multi.choices) == 2 and multi.usage.completion_tokens <= 8
    with open(server.env_audio, "rb") as f:
        wav = base64.b64encode(f.read()).decode()
    content = [{"type": "video", "video": [url, url, url]}, {"type": "input_audio", "input_audio": {"data": wav,
                                                                                                   "format": "wav"}},
               {"type": "text", "text": "What happens?"}]
    av = oc.chat.completions.create(model="omnirrm", max_tokens=3, temperature=0,
                                    messages=[{"role": "user", "content": content}])
    assert av.usage.prompt_tokens > multi.usage.prompt_tokens  # the frames and the audio are in the prompt


def server_image(server) -> str:
    return server.env_image


@pytest.fixture(autouse=True, scope="module")
def _image(server, env):
    server.env_image, server.env_audio = env["image"], env["audio"]


def test_judge_and_reward_equal_the_offline_judge(client, env, offline):
    rows = pair_rows(env)
    for i, row in enumerate(rows):
        for data_url in ((False, True) if row.get("images") else (False,)):
            r = client.post("/v1/judge", json={**request_body(row, env, data_url), "both_orders": True})
            assert r.status_code == 200, r.text
            assert_same_judgement(r.json(), offline["judge"][i])
    one = client.post("/v1/judge", json=request_body(rows[0], env)).json()
    assert "swap" not in one
    assert_same_judgement(one, {k: v for k, v in offline["judge"][0].items() if k not in ("swap", "combined")})
    r = client.post("/v1/reward", json={"pairs": [request_body(row, env) for row in rows], "both_orders": True})
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got["rewards"]) == len(rows)
    for served, want, reward in zip(got["results"], offline["reward"], got["rewards"]):
        assert reward == served["combined"]["reward"]  # both orders asked: the debiased reward, not (A, B)'s
        assert abs(served["reward"] - want["reward"]) < 2e-5
        assert abs(served["combined"]["reward"] - want["combined"]["reward"]) < 2e-5


def _bad_requests(env) -> list[tuple[str, object, int, str]]:
    """(path, JSON body or raw bytes, status, a word the message must name)."""
    ok = {"question": "q", "answer_a": "a", "answer_b": "b"}
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    outside = os.path.abspath(os.path.join(os.path.dirname(env["image"]), "..", "x.png"))
    return [
        ("/v1/judge", b"{not json", 400, "JSON"),
        ("/v1/judge", {**ok, "colour": "red"}, 400, "colour"),
        ("/v1/judge", {**ok, "answer_a": 3}, 400, "answer_a"),
        ("/v1/judge", {"question": "q", "answer_a": "a"}, 400, "answer_b"),
        ("/v1/judge", {**ok, "both_orders": "maybe"}, 400, "both_orders"),
        ("/v1/judge", {**ok, "media": {"images": ["../../etc/passwd"]}}, 400, "media.images[0]"),
        ("/v1/judge", {**ok, "media": {"images": ["/etc/passwd"]}}, 400, "outside the media root"),
        ("/v1/judge", {**ok, "media": {"images": [outside]}}, 400, "media.images[0]"),
        ("/v1/judge", {**ok, "media": {"images": ["nothere.png"]}}, 404, "not found"),
        ("/v1/judge", {**ok, "media": {"images": ["data:image/png;base64,@@@notbase64"]}}, 400, "base64"),
        ("/v1/judge", {**ok, "media": {"images": ["data:image/png;base64," + base64.b64encode(b"junk").decode()]}},
         400, "media"),
        ("/v1/judge", {**ok, "media": {"images": ["http://example.com/x.png"]}}, 400, "URLs are not fetched"),
        ("/v1/judge", {**ok, "question": "word " * 5000}, 400, "max-prompt-tokens"),
        ("/v1/judge", {**ok, "question": "word " * 900}, 400, "max_length"),
        ("/v1/judge", {**ok, "modality": "smell"}, 400, "modality"),
        ("/v1/reward", {"pairs": []}, 400, "pairs"),
        ("/v1/reward", {"pairs": [ok, {**ok, "answer_b": None}]}, 400, "pairs[1]"),
        ("/v1/reward", {"pairs": [ok, {**ok, "media": {"audios": ["data:audio/wav;base64,AAAA"]}}]}, 400, "pairs[1]"),
        ("/v1/chat/completions", {**chat, "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {**chat, "max_tokens": 10_000}, 400, "max_tokens"),
        ("/v1/chat/completions", {**chat, "max_completion_tokens": 10_000}, 400, "max_completion_tokens 10000"),
        ("/v1/chat/completions", {**chat, "n": 99}, 400, "n"),
        ("/v1/chat/completions", {**chat, "seed": 2 ** 70}, 400, "seed"),
        ("/v1/chat/completions", {**chat, "logit_bias": {}}, 400, "logit_bias"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "!!", "format": "wav"}}]}]}, 400, "content[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "../shape.png"}}]}]}, 400, "outside the media root"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "video", "video": ["data:image/png;base64,AAAA"]}]}]}, 400, "messages[0].content[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 3000}]}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ("/v1/chat/completions", {**chat, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ("/v1/chat/completions", {**chat, "frequency_penalty": -1}, 400, "frequency_penalty"),
        ("/v1/chat/completions", {**chat, "logprobs": True}, 400, "logprobs"),
        ("/v1/chat/completions", {**chat, "response_format": {"type": "json_object"}}, 400, "response_format"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "video", "video": ["data:image/png;base64,AAAA"] * 65}]}]}, 400, "messages[0].content[0].video"),
        ("/v1/judge", {**ok, "media": {"images": ["x.png"] * 65}}, 400, "media.images"),
        ("/v1/judge", b'{"question": "\xff"}', 400, "body"),  # not UTF-8: Starlette's own error, our shape
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}], "max_tokens": 2}, 400,
         "user message"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x.png"}}] * 40}] * 2}, 400, "messages"),
    ]


def test_bad_and_hostile_requests_are_4xx_naming_the_field(client, env):
    for path, body, status, word in _bad_requests(env):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"}) \
            if isinstance(body, bytes) else client.post(path, json=body)
        assert r.status_code == status, (path, body if isinstance(body, bytes) else str(body)[:200], r.text)
        err = r.json()["error"]
        assert word in err["message"] or word == err["param"], (word, err)
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/judge", json={"question": "q", "answer_a": "a", "answer_b": "b"}).status_code == 200


def test_api_key_is_required_but_not_for_health(server):
    body = {"question": "q", "answer_a": "a", "answer_b": "b"}
    assert httpx.post(server.url + "/v1/judge", json=body).status_code == 401
    r = httpx.post(server.url + "/v1/judge", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200


def test_full_queue_429_timeout_504_and_left_clients_are_never_run(env, tmp_path):
    """Batches wait 3 s to fill, requests time out after 1.5 s: two queue, the rest get 429 at once; the two
    answer 504 and their jobs are cancelled, so no batch ever runs; a client that hangs up is cancelled too."""
    s = ServerProc(env, str(tmp_path), "--warmup", "none", "--max-batch", "8", "--max-queue", "2",
                   "--max-wait-ms", "3000", "--request-timeout", "1.5")
    try:
        body = {"question": "q", "answer_a": "a", "answer_b": "b"}

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                first = [asyncio.create_task(c.post("/v1/judge", json=body)) for _ in range(2)]
                await asyncio.sleep(0.5)  # the two are queued
                rest = await asyncio.gather(*(c.post("/v1/judge", json=body) for _ in range(4)))
                return await asyncio.gather(*first), rest

        queued, refused = asyncio.run(burst())
        assert [r.status_code for r in refused] == [429] * 4
        assert all(r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "queue_full" for r in refused)
        assert [r.status_code for r in queued] == [504, 504]
        with pytest.raises(httpx.TimeoutException):
            httpx.post(s.url + "/v1/judge", json=body, timeout=0.5)
        import time
        time.sleep(4)  # past the batch wait: the worker found only cancelled jobs
        assert s.metric("omnirrm_serve_batch_rows_count") == 0
        assert s.metric("omnirrm_serve_errors_total", ) >= 7
        assert 'reason="client_disconnected"' in httpx.get(s.url + "/metrics").text
        assert httpx.get(s.url + "/health").json()["queue_depth"] == 0
    finally:
        assert s.stop() == 0, s.log()


def test_sigterm_under_load_answers_in_flight_requests_then_exits_0(env, tmp_path):
    s = ServerProc(env, str(tmp_path), "--warmup", "none", "--max-batch", "4", "--max-wait-ms", "100")
    rows = pair_rows(env)[:3]

    async def load():
        async with httpx.AsyncClient(base_url=s.url, timeout=300) as c:
            tasks = [asyncio.create_task(c.post("/v1/reward" if i % 2 else "/v1/judge",
                                                json={"pairs": [rows[i % 3]]} if i % 2 else rows[i % 3]))
                     for i in range(12)]
            await asyncio.sleep(1.5)  # all sent and in flight (the first batch is still compiling)
            s.proc.send_signal(15)
            return await asyncio.gather(*tasks)

    answers = asyncio.run(load())
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers]
    assert s.proc.wait(120) == 0, s.log()
    assert "draining" in s.log()
    s.stop()


@pytest.mark.slow
def test_restarted_server_reads_its_compiled_shapes_from_the_cache(env, tmp_path):
    """--compile-cache: every program of the second start is read back from the cache; same answers."""
    cache = str(tmp_path / "xla-cache")
    flags = ("--compile-cache", cache, "--max-prompt-tokens", "512", "--max-tokens", "8")
    body = {"question": "What is 3 + 4?", "answer_a": "7", "answer_b": "5"}
    seen = []
    for _ in range(2):
        s = ServerProc(env, str(tmp_path), *flags)
        try:
            r = httpx.post(s.url + "/v1/judge", json=body, timeout=120)
            assert r.status_code == 200, r.text
            seen.append((s.metric("omnirrm_serve_compiles_total"), s.metric("omnirrm_serve_compile_cache_hits_total"),
                         r.json()))
        finally:
            assert s.stop() == 0
    (cold, cold_hits, first), (warm, warm_hits, second) = seen
    assert os.listdir(cache) and cold > 0 and cold_hits == 0
    assert warm == cold and warm_hits == cold, (cold, warm, warm_hits)  # the same programs, all from the cache
    assert second["text"] == first["text"] and second["probs"] == first["probs"]  # the same programs, bitwise


def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries almost no data (a decoder that trusted it would allocate)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_openai_client_options_frames_limit_and_body_limit(server, client):
    """Options standard clients send at their defaults are accepted (include_usage honoured); a video frame over the
    image pixel limit is refused by name before decoding; a body over --max-body-mb is 413 (by Content-Length, and
    chunked); unknown /v1/ paths are labelled "other" in /metrics."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0, "n": 1,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "response_format": {"type": "text"},
            "user": "u1", "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] <= 2

    big = "data:image/png;base64," + base64.b64encode(_png_header(15000, 12000)).decode()
    with open(server.env_image, "rb") as f:
        ok = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    r = client.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "video", "video": [ok, big]}]}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages[0].content[0]" and "messages[0].content[0][1]" in err["message"], err

    pair = {"question": "q " * 150_000, "answer_a": "a", "answer_b": "b"}  # 300 kB > 0.25 MB
    r = client.post("/v1/judge", json=pair)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    body = json.dumps(pair).encode()
    r = client.post("/v1/judge", content=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                    headers={"Content-Type": "application/json"})  # chunked: no Content-Length
    assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]["message"], r.text
    assert client.get("/health").json()["status"] == "ok"

    for i in range(3):
        r = client.post(f"/v1/nothere-{i}-x7", json={})
        assert r.status_code == 404 and r.json()["error"]["code"] == "http_404", r.text
    r = client.get("/v1/judge")
    assert r.status_code == 405 and "GET /v1/judge" in r.json()["error"]["message"], r.text
    nulls = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": None, "top_p": None,
             "n": None, "stream": None}  # OpenAI's "use the default"
    r = client.post("/v1/chat/completions", json=nulls)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1, r.text
    text = client.get("/metrics").text
    assert "nothere" not in text and 'endpoint="other",status="404"' in text


class _FailingJudge:
    """Judge.prepare hitting a bug in the server: {"error": {"reason": "internal_error", ...}}."""
    from omnirrm_jax.data.media import MediaConfig
    media = MediaConfig()

    def prepare(self, *a, **k):
        return {"error": {"reason": "internal_error", "detail": "KeyError: 'x'"}}


def _app(inputs, max_queue=2):
    """The app in this process over stub inputs and an engine whose batches raise."""
    from fastapi.testclient import TestClient

    from omnirrm_jax.serve.app import ServerState, create_app
    from omnirrm_jax.serve.engine import Engine
    from omnirrm_jax.serve.metrics import Metrics

    def run(kind, key, items):
        raise RuntimeError("device fell over")

    engine = Engine(run, max_batch=8, max_wait_s=0.0, max_queue=max_queue).start()
    state = ServerState(inputs=inputs, engine=engine, metrics=Metrics(), model_name="m", max_tokens=8,
                        request_timeout=10.0, chat_len=lambda n: n)
    return TestClient(create_app(state), raise_server_exceptions=False), state


def _abandoned_upload(app) -> None:
    import asyncio

    scope = {"type": "http", "method": "POST", "path": "/v1/judge", "raw_path": b"/v1/judge", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
             "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}

    async def receive():
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception:  # noqa: BLE001 - Starlette may re-raise the disconnect; the count is what is checked
        pass
    assert sent == []  # nothing is sent to a client that left


def test_server_faults_are_json_500_and_oversized_reward_is_400():
    import threading
    import types

    from omnirrm_jax.serve.inputs import Inputs

    inp = Inputs.__new__(Inputs)
    judge = _FailingJudge()
    inp.judges, inp.judge, inp.max_prompt_tokens, inp.tmp_root = {False: judge, True: judge}, judge, 100, None
    inp._local = threading.local()
    inp._local.tok = None
    c, state = _app(inp)
    try:
        pair = {"question": "q", "answer_a": "a", "answer_b": "b"}
        r = c.post("/v1/judge", json=pair)  # Judge.prepare's internal_error: the server's fault
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
        c2, state2 = _app(types.SimpleNamespace(pair=lambda p, both, param="": types.SimpleNamespace(examples=[0])))
        r = c2.post("/v1/judge", json=pair)  # the batch raises: JSON 500, not plain text
        assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"] == {"message": "internal server error (RuntimeError)", "type": "server_error",
                                     "param": None, "code": "internal_error"}
        assert 'endpoint="/v1/judge",status="500"' in state2.metrics.text().decode()  # counted as what was sent
        _abandoned_upload(c2.app)  # the client leaves mid-body: no answer is sent, counted 499 (not a 5xx)
        assert 'endpoint="/v1/judge",status="499"' in state2.metrics.text().decode()
        r = c2.post("/v1/reward", json={"pairs": [pair] * 3})  # more pairs than --max-queue 2: never fits
        assert r.status_code == 400 and r.json()["error"]["param"] == "pairs", r.text
        state2.engine.stop()
        state2.metrics.close()
    finally:
        state.engine.stop()
        state.metrics.close()


def test_engine_queues_all_jobs_of_a_request_or_none():
    from omnirrm_jax.serve.engine import Engine, QueueFull

    e = Engine(lambda kind, key, items: items, max_batch=4, max_wait_s=0.0, max_queue=3)  # not started: jobs wait
    e.submit("reward", "k", 0, 1)
    with pytest.raises(QueueFull):
        e.submit_many([("reward", "k", i, 1) for i in range(3)])
    assert e.depth == 1  # nothing of the refused request was queued
    futures = e.submit_many([("reward", "k", i, 1) for i in range(2)])
    assert e.depth == 3 and len(futures) == 2


def test_chat_rows_carry_each_choice_values_and_pick_one_of_three_programs():
    """A sampled chat batch's RowSampling: every choice of every item in order, padding rows at (1, 1); which of
    the three chat programs a request runs (a temperature too small to divide by is greedy, its limit)."""
    import types

    import numpy as np

    from omnirrm_jax.serve.runner import GREEDY_BELOW, Runner, chat_mode

    judge = types.SimpleNamespace(tok=types.SimpleNamespace(special_ids={"im_end": 5, "pad": 0}), model=None,
                                  cfg=None, batch_size=6, max_new_tokens=64)
    runner = Runner(judge, max_prompt_tokens=256, max_tokens=32)
    assert not hasattr(judge, "verdict_min_prefix")  # the server's setting is on its own copy
    rows = runner.rows([{"n": 2, "temperature": 0.7, "top_p": 0.9}, {"n": 1, "temperature": 1.3, "top_p": 0.5}])
    np.testing.assert_allclose(np.asarray(rows.temperature), [0.7, 0.7, 1.3, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rows.top_p), [0.9, 0.9, 0.5, 1, 1, 1], rtol=1e-6)
    assert [chat_mode(t, p) for t, p in [(0, 1), (GREEDY_BELOW / 10, 0.5), (1e-50, 1), (0.7, 1), (0.7, 0.99)]] == \
        ["greedy", "greedy", "greedy", "temperature", "top_p"]
    assert runner.sampling(16, "temperature").top_p == 1.0 and runner.sampling(16, "top_p").top_p < 1.0
    assert runner.sampling(16, "greedy").greedy


def test_usage_counts_the_tokens_through_the_first_stop_string():
    """completion_tokens after a stop cut: what a decoder stopping at the stop string would have generated."""
    from omnirrm_jax.serve.runner import _tokens_through_stop

    class Chars:
        @staticmethod
        def decode(ids):
            return "".join(map(chr, ids))

    ids = [ord(c) for c in "hello world"]
    assert _tokens_through_stop(Chars, ids, ["wor"]) == len("hello wor")
    assert _tokens_through_stop(Chars, ids, ["zz", "lo"]) == len("hello")
    assert _tokens_through_stop(Chars, ids, ["h"]) == 1
