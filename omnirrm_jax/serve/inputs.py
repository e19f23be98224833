"""Requests -> prepared examples, on the host (request threads, never the device worker).

Why here and not in the routes: media decoding and tokenisation are the slow host part of a request; they run in
the server's thread pool, each thread with its own tokenizer (`judge_runner._thread_copy`), so the device worker
only ever sees ready examples. A pair goes through `Judge.prepare`, the code path of the offline `omnirrm judge`,
so both give the same prompt. Media come as `data:` URLs (written to a per-request temporary folder, deleted once
decoded) or as paths that must resolve under --media-root (`data_prep.rows.resolve_media_path`: no `..`, no
absolute path or symlink out of it). Every refusal is a `RequestError` naming the field."""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
import threading

from data_prep.rows import Quarantine, RowOptions, resolve_media_path
from omnirrm_jax.data import examples as E
from omnirrm_jax.data import records as R
from omnirrm_jax.data.media import MediaError
from omnirrm_jax.errors import UserError
from omnirrm_jax.eval import pairs
from omnirrm_jax.eval.judge_runner import _thread_copy

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.I)
_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
        "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3", "audio/mp3": ".mp3",
        "audio/flac": ".flac", "audio/ogg": ".ogg", "video/mp4": ".mp4", "video/webm": ".webm",
        "video/quicktime": ".mov", "video/x-matroska": ".mkv"}
_DEFAULT_EXT = {"image": ".png", "audio": ".wav", "video": ".mp4"}
CHARS_PER_TOKEN_LIMIT = 16  # text longer than this many chars per allowed token is refused before tokenising


class RequestError(UserError):
    """A request the client must fix: HTTP `status`, OpenAI-style `code` and the offending `param`."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


class Inputs:
    """Turns validated request bodies into `PreparedPair`s (judge, reward) and chat examples."""

    def __init__(self, judges: dict, *, media_root: str | None, max_prompt_tokens: int, tmp_root: str | None = None):
        self.judges = judges  # {both_orders: Judge}; the same model, one prepares (A, B), the other also (B, A)
        self.judge = judges[False]
        self.tok, self.cfg = self.judge.tok, self.judge.cfg
        self.media_root = os.path.realpath(media_root) if media_root else None
        self.max_prompt_tokens = max_prompt_tokens
        self.tmp_root = tmp_root
        self._local = threading.local()

    def _thread_tok(self):
        if not hasattr(self._local, "tok"):
            self._local.tok = _thread_copy(self.tok)
        return self._local.tok

    # ------------------------------------------------------------ media

    def media_path(self, raw: str, kind: str, param: str, tmpdir: str, names: dict) -> str:
        """A media string -> an absolute file path (a decoded data: URL in `tmpdir`, or a checked media-root path)."""
        if not isinstance(raw, str) or not raw:
            raise RequestError(f"{param} must be a non-empty string (a data: URL or a path)", param=param)
        m = _DATA_URL.match(raw)
        if m:
            try:
                data = base64.b64decode(raw[m.end():], validate=True)
            except (binascii.Error, ValueError) as e:
                raise RequestError(f"{param} is not valid base64 ({e})", param=param, code="bad_base64") from None
            if not data:
                raise RequestError(f"{param} is empty", param=param, code="bad_media")
            ext = _EXT.get((m.group(1) or "").lower(), _DEFAULT_EXT[kind])
            return self._write(data, ext, tmpdir, param, names)
        if raw.lower().startswith("data:"):
            raise RequestError(f"{param}: only base64 data: URLs are accepted", param=param, code="bad_media")
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", raw):
            raise RequestError(f"{param}: URLs are not fetched; send a data: URL or a path under --media-root",
                               param=param, code="remote_media")
        if self.media_root is None:
            raise RequestError(f"{param}: local paths are refused (the server has no --media-root); send a data: "
                               "URL", param=param, code="path_not_allowed")
        try:
            path = resolve_media_path(raw, RowOptions(self.media_root))
        except Quarantine as q:
            raise RequestError(f"{param}: {q.detail}", param=param, code=q.reason,
                               status=404 if q.reason == "missing_file" else 400) from None
        names[path] = param
        return path

    def audio_data(self, b64: str, fmt: str, param: str, tmpdir: str, names: dict) -> str:
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"{param} is not valid base64 ({e})", param=param, code="bad_base64") from None
        return self._write(data, "." + fmt, tmpdir, param, names)

    def frames_video(self, frames: list, param: str, tmpdir: str, names: dict) -> str:
        """A video given as its frames (images) -> a lossless video file at 2 fps (the reference's sampling rate,
        so every frame is kept)."""
        from omnirrm_jax.serve.frames import write_video

        paths = [self.media_path(f, "image", f"{param}[{i}]", tmpdir, names) for i, f in enumerate(frames)]
        if not paths:
            raise RequestError(f"{param} has no frames", param=param, code="bad_media")
        out = os.path.join(tmpdir, f"frames{len(names)}.mkv")
        try:
            write_video(paths, out, image_cfg=self.judge.media.image)
        except MediaError as e:  # a frame over the judge's image limits, or not an image
            raise RequestError(self._named(str(e), names), param=param, code="bad_media") from None
        except Exception as e:  # noqa: BLE001 - an undecodable frame is the client's problem, named
            raise RequestError(f"{param}: cannot read the frames ({type(e).__name__}: {self._named(str(e), names)})",
                               param=param, code="video_undecodable") from None
        names[out] = param
        return out

    @staticmethod
    def _write(data: bytes, ext: str, tmpdir: str, param: str, names: dict) -> str:
        fd, path = tempfile.mkstemp(suffix=ext, dir=tmpdir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        names[path] = param
        return path

    def _check_length(self, texts, param: str) -> None:
        n = sum(len(t) for t in texts if t)
        if n > self.max_prompt_tokens * CHARS_PER_TOKEN_LIMIT:
            raise RequestError(f"{param}: {n} characters cannot fit --max-prompt-tokens {self.max_prompt_tokens}",
                               param=param, code="too_long")

    @staticmethod
    def _named(detail: str, names: dict) -> str:
        for path, param in names.items():
            detail = detail.replace(path, param)
        return detail

    # ------------------------------------------------------------ pairs

    def pair(self, pair, both_orders: bool, param: str = "") -> pairs.PreparedPair:
        """A `schemas.PairIn` -> a PreparedPair ((A, B), and (B, A) if both_orders); RequestError otherwise."""
        self._check_length((pair.question, pair.answer_a, pair.answer_b), param or "answer_a")
        row = {k: v for k, v in pair.model_dump(exclude={"media", "both_orders"}).items() if v is not None}
        with tempfile.TemporaryDirectory(dir=self.tmp_root, prefix="omnirrm-req-") as tmpdir:
            names: dict = {}
            media = pair.media.model_dump() if pair.media else {}
            for key, kind in (("images", "image"), ("videos", "video"), ("audios", "audio")):
                paths = [self.media_path(raw, kind, f"{param}media.{key}[{i}]", tmpdir, names)
                         for i, raw in enumerate(media.get(key) or [])]
                if paths:
                    row[key] = paths
            p = self.judges[both_orders].prepare(0, row, RowOptions(media_root=os.sep, media=self.judge.media),
                                                 self._thread_tok())
        if isinstance(p, dict):
            err = p["error"]
            param_ = f"{param}media" if any(n in err["reason"] for n in ("image", "video", "audio", "file")) \
                else f"{param}question" if err["reason"] == "too_long" else param or None
            status = 500 if err["reason"] == "internal_error" else 400  # the server's fault, not the request's
            raise RequestError(f"{param.rstrip('.')}: {self._named(err['detail'], names)}" if param
                               else self._named(err["detail"], names), param=param_, code=err["reason"],
                               status=status)
        return p

    # ------------------------------------------------------------ chat

    def chat(self, req) -> dict:
        """A `schemas.ChatRequest` -> one example (the thinker's chat template, media placeholders expanded)."""
        msgs = req.messages
        if all(m.role == "system" for m in msgs):
            raise RequestError("messages: at least one user message is needed (only system messages were sent)",
                               param="messages")
        if msgs[-1].role == "assistant":
            raise RequestError("messages: the last message must be the user's (continuing an assistant message is "
                               "not supported)", param="messages")
        texts = [m.content if isinstance(m.content, str) else " ".join(getattr(p, "text", "") for p in m.content)
                 for m in msgs]
        self._check_length(texts, "messages")
        media = {"images": [], "videos": [], "audios": []}
        items_msgs = []
        with tempfile.TemporaryDirectory(dir=self.tmp_root, prefix="omnirrm-req-") as tmpdir:
            names: dict = {}
            for i, m in enumerate(msgs):
                if isinstance(m.content, str):
                    items_msgs.append({"role": m.role, "content": [{"type": "text", "text": m.content}]})
                    continue
                items = []
                for j, part in enumerate(m.content):
                    param = f"messages[{i}].content[{j}]"
                    if part.type == "text":
                        items.append({"type": "text", "text": part.text})
                    elif part.type == "image_url":
                        media["images"].append(self.media_path(part.image_url.url, "image", param, tmpdir, names))
                        items.append({"type": "image"})
                    elif part.type == "video":
                        v = part.video
                        media["videos"].append(self.frames_video(v, param, tmpdir, names) if isinstance(v, list)
                                               else self.media_path(v, "video", param, tmpdir, names))
                        items.append({"type": "video"})
                    else:
                        a = part.input_audio
                        media["audios"].append(self.audio_data(a.data, a.format, param, tmpdir, names))
                        items.append({"type": "audio"})
                items_msgs.append({"role": m.role, "content": items})
            return self._chat_example(items_msgs, media, names)

    def _chat_example(self, items_msgs: list, media: dict, names: dict) -> dict:
        from data_prep import rows

        import json

        tags = "".join(f"<{k[:-1]}>" * len(v) for k, v in media.items())
        kinds = [k[:-1] for k, v in media.items() if v]
        row = {"messages": [{"role": "user", "content": tags}], "modality": kinds[0] if kinds else "text",
               **{k: v for k, v in media.items() if v}}
        opts = RowOptions(media_root=os.sep, media=self.judge.media)
        try:
            data, _ = rows.build_record(json.dumps(row).encode(), "request", 0, opts, [])
            rec = R.decode_record(data)
            return E.build_example(dict(rec, messages=items_msgs, gold=pairs._NO_GOLD), 0, self._thread_tok(),
                                   self.cfg, mode="grpo", max_length=self.max_prompt_tokens,
                                   max_media=pairs.NO_MEDIA_LIMIT)
        except rows.Quarantine as q:
            param = names.get(q.media) if q.media else None
            raise RequestError(self._named(q.detail, names), param=param or "messages", code=q.reason) from None
        except E.Skip as s:
            raise RequestError(f"messages: {self._named(s.detail, names)}", param="messages", code=s.reason) from None
