"""Images, videos and audio -> Qwen2.5-Omni thinker inputs, exactly as the Omni-RRM reference made them.

Why: the released Omni-RRM weights were trained on inputs built by ms-swift (template/template/qwen.py,
``Qwen2_5OmniTemplate``) + qwen-omni-utils (``v2_5/vision_process.py``) + the HF Qwen2.5-Omni processor called with
``do_resize=False``.  Reproducing those sizes, frame choices, pixel values and log-mels without torch/torchvision
keeps the JAX model on its training distribution.  No JAX here: this runs in data-prep worker processes.

Shapes: P patches x 1176 values (= 3 channels x 2 temporal x 14 x 14, in that order); rows in
(t, block_row, block_col, 2x2 within block) order; M mel frames.  Every decode problem is a ``MediaError``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from typing import Any

import numpy as np

PATCH, MERGE, TEMPORAL = 14, 2, 2  # models/config.py VisionConfig: patch_size, spatial_merge_size, temporal_patch_size
FACTOR = PATCH * MERGE
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
SAMPLE_RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 128


class MediaError(Exception):
    """A file or array that cannot become model input; ``path``/``reason`` feed quarantine logs (both in ``args``,
    so the error pickles across worker processes)."""

    def __init__(self, path: Any, reason: str):
        super().__init__(str(path), reason)
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Image settings of the reference run (ms-swift env MIN_PIXELS / MAX_PIXELS feed qwen-omni-utils fetch_image).

    ``resize_rule``/``rgb_rule`` default to the reference path (ms-swift ``load_image`` = ``convert('RGB')``, then
    qwen-omni-utils ``smart_resize``); "hf" gives what ``Qwen2VLImageProcessor`` alone does."""

    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 131072
    max_input_pixels: int = 2 * 89_478_485  # refuse to decode more (Pillow's decompression-bomb limit)
    resize_rule: str = "qwen_omni_utils"
    rgb_rule: str = "swift"


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """Video settings of the reference SFT run (env FPS=1, FPS_MAX_FRAMES=20 (GRPO: 8), VIDEO_MAX_PIXELS=12288).

    Unset env vars keep qwen-omni-utils defaults.  Mind the floor: fetch_video caps frames at
    ``max(min(max_pixels, total_pixels / n * 2), int(min_pixels * 1.05))``, so with the default VIDEO_MIN_PIXELS
    (100352) VIDEO_MAX_PIXELS=12288 has no effect and frames get ~105k pixels.  ``processor_fps``: the fps the HF
    Omni processor assumes for ``second_per_grid`` (ms-swift never passes the sampled fps: 2.0 -> 1.0 s per grid);
    None uses the true sampling rate instead."""

    fps: float = 1.0
    fps_min_frames: int = 4
    fps_max_frames: int = 20
    frame_factor: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 12288
    total_pixels: int = int(128000 * 28 * 28 * 0.9)
    processor_fps: float | None = 2.0
    max_input_pixels: int = 8192 * 8192  # per decoded frame


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    """All media settings of one run; defaults = the reference SFT run, ``grpo()`` = its GRPO stage."""

    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)
    sampling_rate: int = SAMPLE_RATE
    audio_max_seconds: int = 300  # the processor's Whisper window: longer audio is cut to its first 300 s (prep notes it)
    # Longer audio is refused without being decoded (from the file's header where it has one, else by decoding no
    # more than this): the model sees at most audio_max_seconds, and a one-hour WAV took 2.3 GB to decode.
    audio_max_input_seconds: float = 600.0

    @classmethod
    def grpo(cls) -> "MediaConfig":
        return cls(video=VideoConfig(fps_max_frames=8))

    @classmethod
    def from_env(cls, env: dict | None = None) -> "MediaConfig":
        """Read the ms-swift env var names (swift/llm/model/model/qwen.py ``patch_qwen_vl_utils``)."""
        env = os.environ if env is None else env
        get = lambda k, d, t=int: t(env[k]) if env.get(k) else d  # noqa: E731
        vi = VideoConfig()
        return cls(image=ImageConfig(min_pixels=get("MIN_PIXELS", 3136), max_pixels=get("MAX_PIXELS", 12845056)),
                   video=VideoConfig(fps=get("FPS", 2.0, float), fps_min_frames=get("FPS_MIN_FRAMES", 4),
                                     fps_max_frames=get("FPS_MAX_FRAMES", 768), frame_factor=get("FRAME_FACTOR", 2),
                                     min_pixels=get("VIDEO_MIN_PIXELS", vi.min_pixels),
                                     max_pixels=get("VIDEO_MAX_PIXELS", 768 * 28 * 28),
                                     total_pixels=get("VIDEO_TOTAL_PIXELS", vi.total_pixels)),
                   sampling_rate=get("SAMPLING_RATE", SAMPLE_RATE))


# ---------------------------------------------------------------- images

def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280, rule: str = "hf") -> tuple[int, int]:
    """Target (h, w): multiples of ``factor``, area within [min, max], aspect ratio kept.

    rule="hf": transformers ``qwen2_vl`` ``smart_resize`` (round half-to-even, max(factor, floor) when shrinking).
    rule="qwen_omni_utils": ``qwen_omni_utils/v2_5/vision_process.py`` ``smart_resize`` (max(factor, round) first,
    plain floor when shrinking) -- the one that sized every reference image and video frame."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
    if rule not in ("hf", "qwen_omni_utils"):
        raise ValueError(f"unknown resize rule {rule!r}")
    lo = factor if rule == "qwen_omni_utils" else 0
    h_bar, w_bar = max(lo, round(height / factor) * factor), max(lo, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        lo = factor if rule == "hf" else 0
        h_bar = max(lo, math.floor(height / beta / factor) * factor)
        w_bar = max(lo, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(img, rule: str):
    """rule="hf": transformers ``convert_to_rgb`` (any alpha composited onto white).  rule="swift": ms-swift
    ``vision_utils.load_image`` (``convert('RGB')``, alpha dropped); qwen-omni-utils ``to_rgb`` is then a no-op."""
    from PIL import Image
    if rule == "hf" and ("A" in img.getbands() or img.info.get("transparency") is not None):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if rule not in ("hf", "swift"):
        raise ValueError(f"unknown rgb rule {rule!r}")
    return img.convert("RGB") if img.mode != "RGB" else img


def _as_pil(image, name: str):
    from PIL import Image
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise MediaError(name, f"expected a PIL image or a uint8 HxW[x1|3|4] array, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _normalize(frames_THWC: np.ndarray) -> np.ndarray:
    """uint8 -> float32 like the HF numpy backend: x * (1/255) in float64, cast, then (x - mean) / std in float32."""
    x = (frames_THWC.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - CLIP_MEAN) / CLIP_STD


def _patchify(x_THWC: np.ndarray) -> np.ndarray:
    """(T, H, W, C), T even -> (T/2 * H/14 * W/14, C*2*14*14); rows (t, block_row, block_col, 2x2), cols (c,t,y,x)."""
    t, h, w, c = x_THWC.shape
    x = x_THWC.reshape(t // TEMPORAL, TEMPORAL, h // FACTOR, MERGE, PATCH, w // FACTOR, MERGE, PATCH, c)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x.reshape(-1, c * TEMPORAL * PATCH * PATCH))


def image_to_patches(image, min_pixels: int = 56 * 56, max_pixels: int = 16384 * 28 * 28, *, rule: str = "hf",
                     rgb_rule: str = "hf", name: str = "<image>") -> tuple[np.ndarray, np.ndarray]:
    """PIL image or uint8 HxW[x3|4] array -> (pixel_values (P, 1176) float32, grid_thw (3,) int64).

    Defaults equal HF ``Qwen2VLImageProcessor`` (PIL backend: PIL bicubic resize, x1/255, CLIP normalisation); the
    single frame fills both temporal slots (grid_t = 1).  A too-extreme aspect ratio raises ``MediaError``."""
    from PIL import Image
    img = _to_rgb(_as_pil(image, name), rgb_rule)
    w, h = img.size
    try:
        rh, rw = smart_resize(h, w, FACTOR, min_pixels, max_pixels, rule)
    except ValueError as e:
        raise MediaError(name, f"cannot size {w}x{h} image: {e}") from None
    if rh < FACTOR or rw < FACTOR:
        raise MediaError(name, f"{w}x{h} image resizes to {rw}x{rh}")
    if (rh, rw) != (h, w):
        img = img.resize((rw, rh), Image.BICUBIC)
    x = _normalize(np.asarray(img)[None])
    return _patchify(np.repeat(x, TEMPORAL, axis=0)), np.array([1, rh // PATCH, rw // PATCH], np.int64)


def open_image(path, cfg: ImageConfig = ImageConfig()):
    """Decode an image file to RGB PIL, refusing files over ``cfg.max_input_pixels`` before decoding the pixels."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.width * im.height > cfg.max_input_pixels:
                raise MediaError(path, f"{im.width}x{im.height} image exceeds the decode budget of "
                                       f"{cfg.max_input_pixels} pixels")
            im.load()
            rgb = _to_rgb(im, cfg.rgb_rule)
            return rgb.copy() if rgb is im else rgb
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(path, "file not found") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, DecompressionBombError, struct.error, ...
        raise MediaError(path, f"cannot decode image: {type(e).__name__}: {e}") from e


def process_image(source, cfg: ImageConfig = ImageConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Reference path for one image (path, PIL or array): ms-swift load -> qwen-omni-utils fetch_image resize -> HF
    processor with do_resize=False."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<image>"
    img = open_image(source, cfg) if isinstance(source, (str, os.PathLike)) else _as_pil(source, name)
    return image_to_patches(img, cfg.min_pixels, cfg.max_pixels, rule=cfg.resize_rule, rgb_rule=cfg.rgb_rule, name=name)


# ---------------------------------------------------------------- videos

def smart_nframes(total_frames: int, video_fps: float, cfg: VideoConfig = VideoConfig()) -> int:
    """qwen_omni_utils/v2_5/vision_process.py ``smart_nframes`` (fps branch): total/video_fps*FPS, clamped to
    [ceil2(FPS_MIN_FRAMES), floor2(min(FPS_MAX_FRAMES, total))] and total, floored to a multiple of FRAME_FACTOR."""
    ff = cfg.frame_factor
    min_frames = math.ceil(cfg.fps_min_frames / ff) * ff
    max_frames = math.floor(min(cfg.fps_max_frames, total_frames) / ff) * ff
    n = total_frames / video_fps * cfg.fps
    n = math.floor(min(min(max(n, min_frames), max_frames), total_frames) / ff) * ff
    if not ff <= n <= total_frames:
        raise ValueError(f"nframes should in interval [{ff}, {total_frames}], but got {n}.")
    return int(n)


def frame_indices(total_frames: int, nframes: int) -> np.ndarray:
    """qwen-omni-utils' ``torch.linspace(0, total - 1, n).round().long()`` bit for bit: float32, ATen's two-sided
    formula (second half ``end - step * k`` with one rounding), half-to-even.  Float32 matters for long videos."""
    if nframes == 1:
        return np.zeros(1, np.int64)
    i = np.arange(nframes)
    end = np.float32(total_frames - 1)
    step = np.float32(end / np.float32(nframes - 1))
    first = step * i.astype(np.float32)
    second = (np.float64(end) - np.float64(step) * (nframes - 1 - i)).astype(np.float32)
    return np.round(np.where(i < nframes // 2, first, second)).astype(np.int64)


def video_frame_size(height: int, width: int, nframes: int, cfg: VideoConfig = VideoConfig()) -> tuple[int, int]:
    """qwen-omni-utils ``fetch_video`` frame size: smart_resize(min=VIDEO_MIN_PIXELS,
    max=max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / nframes * FRAME_FACTOR), int(VIDEO_MIN_PIXELS * 1.05)))."""
    max_pixels = max(min(cfg.max_pixels, cfg.total_pixels / nframes * cfg.frame_factor), int(cfg.min_pixels * 1.05))
    return smart_resize(height, width, FACTOR, cfg.min_pixels, max_pixels, rule="qwen_omni_utils")


def _aa_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices / float32 weights (out, taps) after ATen's ``_compute_weights_aa`` and its float/double mix."""
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support, inv = (f32(2 * f64(scale)), f32(1 / f64(scale))) if scale >= 1.0 else (f32(2.0), f32(1.0))
    center = (f64(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    xmin = np.maximum(((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    xsize = np.minimum(((center + support).astype(f64) + 0.5).astype(np.int64), in_size) - xmin
    j = np.arange(int(xsize.max()))
    arg = (((xmin[:, None] + j).astype(f32) - center[:, None]).astype(f64) + 0.5) * f64(inv)
    x, a = np.abs(arg.astype(f32)), -0.5  # bicubic with PIL's a = -0.5, as ATen's antialias path
    w = np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    w = np.where(j < xsize[:, None], w, f32(0))
    total = functools.reduce(np.add, w.T)  # sequential float32 sum, as ATen
    return np.minimum(xmin[:, None] + j, in_size - 1), w / total[:, None]


def resize_frame(frame_HWC: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frame -> uint8 (height, width) like torchvision ``resize(..., BICUBIC, antialias=True)`` on a uint8
    tensor, which is what qwen-omni-utils fetch_video does: float32 antialiased bicubic, width pass then height pass,
    clamp to [0, 255], round half-to-even.  Matches torch to +-1 level on ~1e-5 of values (ATen's exact float
    rounding is not reproduced).  Images use PIL bicubic instead, as the reference did."""
    x = frame_HWC.astype(np.float32)
    for axis, out in ((1, width), (0, height)):
        if x.shape[axis] != out:
            idx, w = _aa_taps(x.shape[axis], out)
            shape = (1, out, 1) if axis == 1 else (out, 1, 1)
            x = sum(np.take(x, idx[:, k], axis=axis) * w[:, k].reshape(shape) for k in range(idx.shape[1]))
    return np.rint(np.clip(x, 0, 255)).astype(np.uint8)


def _decode_video(path, cfg: VideoConfig):
    """PyAV decode -> (frames at native size, times, total_frames, video_fps) for the frames smart_nframes picks.

    total_frames / video_fps follow qwen-omni-utils' torchvision reader (which also decodes with PyAV): number of
    decoded frames and ``stream.average_rate``.  A first demux-only pass counts packets so only the picked frames
    are converted to RGB; if decoding yields a different count the pick is redone on the true count."""
    import av
    def pick(total, fps):
        try:
            return frame_indices(total, smart_nframes(total, fps, cfg))
        except ValueError as e:
            raise MediaError(path, f"{total} frames: {e}") from None

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MediaError(path, "no video stream")
            st = c.streams.video[0]
            if st.codec_context.width * st.codec_context.height > cfg.max_input_pixels:
                raise MediaError(path, f"{st.codec_context.width}x{st.codec_context.height} frames exceed the "
                                       f"decode budget of {cfg.max_input_pixels} pixels")
            rate = st.average_rate or st.guessed_rate
            if not rate:
                raise MediaError(path, "unknown frame rate")
            fps, total = float(rate), sum(1 for p in c.demux(st) if p.size)
        for _ in range(2):
            wanted = pick(total, fps)
            frames, times, n = {}, {}, 0
            with av.open(str(path)) as c:
                st = c.streams.video[0]
                st.thread_type = "AUTO"
                for n, fr in enumerate(c.decode(st), 1):
                    if n - 1 in wanted:
                        frames[n - 1] = fr.to_ndarray(format="rgb24")
                        times[n - 1] = fr.time if fr.time is not None else (n - 1) / fps
            if n == total or n == 0:
                break
            total = n
        if n == 0 or any(i not in frames for i in wanted):
            raise MediaError(path, f"decoded {n} of {total} frames, unstable frame count")
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(path, "file not found") from None
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise MediaError(path, f"cannot decode video: {type(e).__name__}: {e}") from e
    return [frames[i] for i in wanted], [times[i] for i in wanted], total, fps


def video_to_patches(path_or_frames, cfg: VideoConfig = VideoConfig()):
    """Video file (or already-sampled uint8 (T, H, W, 3) frames) -> model inputs, the reference way.

    Returns (pixel_values_videos (P, 1176) float32, video_grid_thw (3,) int64, second_per_grid float,
    frame_times (T,) seconds).  Files: PyAV decode, qwen-omni-utils smart_nframes + linspace pick, fetch_video frame
    size and torchvision-style resize, then the HF processor with do_resize=False (pairs of frames; an odd count
    repeats the last frame).  Given frames are taken as picked (times i / cfg.fps) and only resized."""
    if isinstance(path_or_frames, (str, os.PathLike)):
        frames, times, total, fps = _decode_video(path_or_frames, cfg)
        name, sample_fps = str(path_or_frames), len(frames) / max(total, 1e-6) * fps
    else:
        frames, name, sample_fps = [np.asarray(f) for f in path_or_frames], "<frames>", cfg.fps
        times = [i / cfg.fps for i in range(len(frames))]
        if not frames or any(f.dtype != np.uint8 or f.shape != frames[0].shape or f.shape[-1:] != (3,) for f in frames):
            raise MediaError(name, "expected a non-empty sequence of equal-shape uint8 HxWx3 frames")
    h, w = frames[0].shape[:2]
    try:
        rh, rw = video_frame_size(h, w, len(frames), cfg)
    except ValueError as e:
        raise MediaError(name, f"cannot size {w}x{h} frames: {e}") from None
    if rh < FACTOR or rw < FACTOR:
        raise MediaError(name, f"{w}x{h} frames resize to {rw}x{rh}")
    pad = -len(frames) % TEMPORAL
    frames, times = frames + frames[-1:] * pad, times + times[-1:] * pad
    x = _normalize(np.stack([resize_frame(f, rh, rw) for f in frames]))
    grid = np.array([len(frames) // TEMPORAL, rh // PATCH, rw // PATCH], np.int64)
    return _patchify(x), grid, TEMPORAL / (cfg.processor_fps or sample_fps), np.asarray(times, np.float64)


# ---------------------------------------------------------------- audio

def _checked(path, wave: np.ndarray) -> np.ndarray:
    if wave.size == 0:
        raise MediaError(path, "zero-length audio")
    if not np.isfinite(wave).all():
        raise MediaError(path, f"{int((~np.isfinite(wave)).sum())} non-finite samples (NaN/Inf)")
    return wave.astype(np.float32, copy=False)


def _too_long(path, seconds: float, max_seconds: float) -> MediaError:
    return MediaError(path, f"{seconds:.0f} s of audio exceeds the decode budget of {max_seconds:g} s "
                            "(MediaConfig.audio_max_input_seconds)")


def audio_seconds(path) -> float | None:
    """The duration a file's header gives (soundfile: WAV, FLAC, OGG, MP3; else the PyAV container), without decoding
    the samples; None when neither reader knows it (the decoder then reports what is wrong)."""
    try:
        import soundfile
        info = soundfile.info(str(path))
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - not a format libsndfile reads: ask the container
        pass
    try:
        import av
        with av.open(str(path)) as c:
            if c.duration:
                return c.duration / av.time_base
    except Exception:  # noqa: BLE001 - unreadable header: unknown
        pass
    return None


def load_audio(path, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """ms-swift ``vision_utils.load_audio``: ``librosa.load(path, sr=sr)`` (mono mean, soxr_hq resample) -> float32.

    ``max_seconds``: refuse longer audio (``MediaError``, "exceeds the decode budget") before decoding it when the
    header tells the duration, else after decoding at most a second more than that (memory stays bounded)."""
    import librosa
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    duration = None
    if max_seconds is not None:
        seconds = audio_seconds(path)
        if seconds is not None and seconds > max_seconds:
            raise _too_long(path, seconds, max_seconds)
        duration = max_seconds + 1.0  # a shorter file decodes whole, as without the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's audioread fallback is deprecated and noisy
            wave, _ = librosa.load(path, sr=sr, mono=True, duration=duration)
    except Exception as e:  # soundfile, audioread and soxr each raise their own types
        if "not finite" in str(e):  # librosa's to_mono/resample validate the buffer first
            raise MediaError(path, "non-finite samples (NaN/Inf)") from e
        raise MediaError(path, f"cannot decode audio: {type(e).__name__}: {e}") from e
    if max_seconds is not None and wave.size > max_seconds * sr:
        raise _too_long(path, wave.size / sr, max_seconds)
    return _checked(path, wave)


def extract_audio_track(path, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray | None:
    """Audio-in-video: first audio stream -> 16 kHz mono float32 like ``librosa.load(video, sr)`` in ms-swift's
    Omni template (channel mean, then soxr_hq resample); None when the file has no audio (or it decodes empty).
    ``max_seconds`` as in ``load_audio``: a longer track is refused, from the container's duration or mid-decode."""
    import av
    import librosa
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                return None
            if max_seconds is not None and c.duration and c.duration / av.time_base > max_seconds:
                raise _too_long(path, c.duration / av.time_base, max_seconds)
            st = c.streams.audio[0]
            resampler, chunks, rate, n = av.AudioResampler(format="fltp"), [], st.rate, 0
            for fr in c.decode(st):
                for out in resampler.resample(fr):
                    chunks.append(out.to_ndarray())
                    rate, n = out.sample_rate, n + out.samples
                if max_seconds is not None and n > (max_seconds + 1.0) * rate:
                    raise _too_long(path, n / rate, max_seconds)
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
    except FileNotFoundError:
        raise MediaError(path, "file not found") from None
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise MediaError(path, f"cannot decode audio track: {type(e).__name__}: {e}") from e
    if not chunks or sum(ch.shape[1] for ch in chunks) == 0:
        return None
    wave = np.concatenate(chunks, axis=1).mean(axis=0)
    if rate != sr:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sr, res_type="soxr_hq")
    return _checked(path, wave)


@functools.lru_cache(maxsize=4)
def mel_filter_bank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(n_fft/2+1, n_mels) float64 slaney-scale, slaney-normalised triangles over 0..8 kHz (transformers
    ``audio_utils.mel_filter_bank`` as WhisperFeatureExtractor calls it)."""
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4))
        return np.where(f >= 1000.0, log_part, 3.0 * f / 200.0)

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2)
    hz = np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), 200.0 * mels / 3.0)
    fft_freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    slopes = hz[None, :] - fft_freqs[:, None]
    diff = np.diff(hz)
    tri = np.maximum(0.0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))
    return tri * (2.0 / (hz[2:n_mels + 2] - hz[:n_mels]))[None, :]


def whisper_features(wave: np.ndarray, max_seconds: int = 300) -> tuple[np.ndarray, int]:
    """16 kHz mono wave -> (log-mel (128, L) float32, L = ceil(n / 160) valid frames), equal on those frames to the
    Omni processor's ``WhisperFeatureExtractor(chunk_length=300)(padding="max_length", truncation=True)``.

    HF zero-pads every clip to 300 s *before* the centred (reflect) STFT and clamps at (max over the whole padded
    clip) - 8; frames past the signal are log10(1e-10) there, so only frames touching samples are computed here."""
    x = np.asarray(wave)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-D wave, got shape {x.shape}")
    n_samples = max_seconds * SAMPLE_RATE
    x = x.astype(np.float32)[:n_samples].astype(np.float64)  # HF casts to float32 first
    n, pad, n_total = x.size, N_FFT // 2, n_samples // HOP
    n_valid = min(-(-n // HOP), n_total)
    n_frames = min(n_total, -(-(n + pad) // HOP))  # frames whose window touches a sample
    if n_frames == n_total:  # reaches the end of the 300 s clip: reflect there too
        padded = np.pad(np.concatenate([x, np.zeros(n_samples - n)]), pad, mode="reflect")
    else:
        seg = np.zeros(max((n_frames - 1) * HOP + N_FFT - pad, pad + 1))
        seg[: min(n, seg.size)] = x[: seg.size]
        padded = np.concatenate([seg[pad:0:-1], seg])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    filters_FM = mel_filter_bank()
    log_MT = np.empty((N_MELS, n_frames))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    for s in range(0, n_frames, 4096):  # chunks bound the memory of long clips
        spec = np.abs(np.fft.rfft(frames[s:s + 4096][: n_frames - s] * window, axis=1)) ** 2
        log_MT[:, s:s + spec.shape[0]] = np.log10(np.maximum(filters_FM.T @ spec.T, 1e-10))
    log_MT = np.maximum(log_MT, log_MT.max() - 8.0)
    return ((log_MT[:, :n_valid] + 4.0) / 4.0).astype(np.float32), n_valid
