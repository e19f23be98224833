"""A prompt's media as OpenAI chat content parts, the way the reference's annotation scripts sent them to the
teachers: an image as one `image_url` data URL; a video as frames at 1 fps (at most 35, each shrunk to fit
512x512, JPEG) as `image_url` parts; audio as an `input_audio` part (base64 WAV or MP3; other formats are decoded
and sent as 16 kHz WAV). (The reference's audio script pasted only a truncated base64 preview into the text; a real
audio part is what a teacher can hear.) `media_digest` is what the teacher cache keys a file's content by."""

from __future__ import annotations

import base64
import hashlib
import io
import os

_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif"}


def media_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _jpeg(image, size: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_part(path: str) -> dict:
    mime = _IMAGE_MIME.get(os.path.splitext(path)[1].lower())
    if mime is None:  # convert what a chat API may not take, as the reference converted to JPEG
        from PIL import Image

        with Image.open(path) as im:
            mime, data = "image/jpeg", _jpeg(im, 1 << 14)
    else:
        with open(path, "rb") as f:
            data = f.read()
    return {"type": "image_url", "image_url": {"url": _data_url(mime, data)}}


def video_frames(path: str, fps: float = 1.0, max_frames: int = 35, size: int = 512) -> list[bytes]:
    """JPEG frames at `fps` (the first frame at or after each 1/fps step), at most `max_frames`. Time counts from
    the first frame: streams cut from MPEG-TS or without re-encoding start late (at 20 s, say), and counting from 0
    kept every frame until the clock caught up."""
    import math

    import av

    out, start, next_t = [], None, 0.0
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else None
            if t is not None and start is None:
                start = t
            rel = next_t if t is None else t - start
            if rel + 1e-6 < next_t:
                continue
            out.append(_jpeg(frame.to_image(), size))
            next_t = (math.floor(rel * fps + 1e-6) + 1) / fps  # the next step after this frame (gaps skipped)
            if len(out) >= max_frames:
                break
    if not out:
        raise ValueError(f"{path}: no video frames decoded")
    return out


def audio_part(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".wav", ".mp3"):
        with open(path, "rb") as f:
            data, fmt = f.read(), ext[1:]
    else:
        import wave

        import numpy as np

        from omnirrm_jax.data.media import load_audio

        samples = load_audio(path, 16000)
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm)
        data, fmt = buf.getvalue(), "wav"
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode("ascii"), "format": fmt}}


def media_parts(modality: str, path: str | None, *, fps: float = 1.0, max_frames: int = 35,
                size: int = 512) -> list[dict]:
    """The content parts that go before the prompt text (raises OSError / ValueError on unreadable media)."""
    if path is None:
        return []
    if modality == "image":
        return [image_part(path)]
    if modality == "video":
        return [{"type": "image_url", "image_url": {"url": _data_url("image/jpeg", f)}}
                for f in video_frames(path, fps, max_frames, size)]
    return [audio_part(path)]
