"""Media preprocessing parity: HF image processor (PIL backend) and Whisper features, the qwen-omni-utils frame
rules (hand-computed), torchvision-style frame resizing, patch layout, and MediaError on every bad input.

All media are generated here (PIL images, PyAV mp4s, numpy/soundfile wavs); nothing is downloaded.
"""
import pickle
import time
import zlib

import numpy as np
import pytest

from omnirrm_jax.data import media as M

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
RNG = np.random.default_rng(0)


def _hf_image(img, min_pixels=3136, max_pixels=12845056):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)(images=img, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"][0]


def _write_mp4(path, seconds=3, fps=10, w=64, h=48, audio=False):
    """A moving red square on grey, libx264 (mpeg4 as fallback), optional 44.1 kHz stereo 440 Hz AAC track."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if audio:
            ast = c.add_stream("aac", rate=44100)
            ast.layout = "stereo"
        for i in range(seconds * fps):
            img = np.full((h, w, 3), 30, np.uint8)
            x = (i * 3) % (w - 10)
            img[10:20, x:x + 10] = (250, 40, 40)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            n = seconds * 44100
            s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
            for k in range(0, n, 1024):
                fr = av.AudioFrame.from_ndarray(np.stack([s, s])[:, k:k + 1024].copy(), format="fltp", layout="stereo")
                fr.sample_rate, fr.pts = 44100, k
                for p in ast.encode(fr):
                    c.mux(p)
            for p in ast.encode():
                c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    _write_mp4(d / "square.mp4")
    _write_mp4(d / "square_audio.mp4", audio=True)
    data = (d / "square.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "corrupt.mp4").write_bytes(RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return d


# ---------------------------------------------------------------- images

def test_smart_resize_matches_hf_and_qwen_omni_utils():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rng = np.random.default_rng(1)
    for _ in range(3000):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        lo, hi = int(rng.choice([3136, 100352])), int(rng.choice([12288, 105369, 131072, 12845056]))
        try:
            want = hf_smart_resize(h, w, 28, lo, hi)
        except ValueError:
            with pytest.raises(ValueError):
                M.smart_resize(h, w, 28, lo, hi)
            continue
        assert M.smart_resize(h, w, 28, lo, hi) == want, (h, w, lo, hi)
    assert M.smart_resize(70, 98) == (56, 112)  # 2.5 -> 2 and 3.5 -> 4: Python's round half-to-even
    # The rules differ for thin images: HF rounds 10 -> 0 then grows to min_pixels, qwen-omni-utils clamps to 28.
    assert M.smart_resize(10, 1000, rule="hf") == (28, 560)
    assert M.smart_resize(10, 1000, rule="qwen_omni_utils") == (28, 1008)


@pytest.mark.parametrize("name,make,max_pixels", [
    ("37x291", lambda: Image.fromarray(RNG.integers(0, 256, (37, 291, 3), dtype=np.uint8)), 12845056),
    ("500x333", lambda: Image.fromarray(RNG.integers(0, 256, (333, 500, 3), dtype=np.uint8)), 131072),
    ("tiny 5x20", lambda: Image.fromarray(RNG.integers(0, 256, (5, 20, 3), dtype=np.uint8)), 131072),
    ("over budget 2000x1500", lambda: Image.fromarray(RNG.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)), 131072),
    ("grayscale", lambda: Image.fromarray(RNG.integers(0, 256, (90, 130), dtype=np.uint8), "L"), 131072),
    ("rgba", lambda: Image.fromarray(RNG.integers(0, 256, (64, 100, 4), dtype=np.uint8), "RGBA"), 131072),
    ("palette", lambda: Image.fromarray(RNG.integers(0, 256, (60, 61, 3), dtype=np.uint8)).convert("P"), 131072),
])
def test_image_patches_equal_hf_pil_backend(name, make, max_pixels):
    img = make()
    want, want_grid = _hf_image(img, max_pixels=max_pixels)
    got, grid = M.image_to_patches(img, max_pixels=max_pixels)
    np.testing.assert_array_equal(grid, want_grid)
    assert got.dtype == np.float32 and got.shape == want.shape == (int(np.prod(grid)), 1176)
    assert np.abs(got - want).max() == 0.0, name  # measured: bit-exact for every case


@pytest.mark.slow
def test_huge_image_above_default_max_pixels_equals_hf():
    img = Image.fromarray(RNG.integers(0, 256, (3300, 4000, 3), dtype=np.uint8))  # 13.2 M > 12845056
    want, want_grid = _hf_image(img)
    got, grid = M.image_to_patches(img)
    np.testing.assert_array_equal(grid, want_grid)
    assert np.abs(got - want).max() == 0.0


def test_image_aspect_ratio_and_arrays():
    with pytest.raises(M.MediaError, match="aspect ratio must be smaller than 200"):
        M.image_to_patches(np.zeros((1, 1000, 3), np.uint8))
    a = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(M.image_to_patches(a)[0], M.image_to_patches(Image.fromarray(a))[0])
    with pytest.raises(M.MediaError, match="uint8"):
        M.image_to_patches(np.zeros((40, 50, 3), np.float32))


def test_reference_image_path_drops_alpha_like_ms_swift(tmp_path):
    rgba = Image.fromarray(RNG.integers(0, 256, (300, 400, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    pv, grid = M.process_image(tmp_path / "a.png")  # ms-swift load_image: convert('RGB'), then 131072-pixel budget
    want, want_grid = _hf_image(rgba.convert("RGB"), min_pixels=3136, max_pixels=131072)
    np.testing.assert_array_equal(grid, want_grid)
    np.testing.assert_array_equal(pv, want)
    assert np.prod(grid[1:]) * 196 <= 131072


def _png_header_only(path, width, height):
    chunk = lambda kind, data: (len(data).to_bytes(4, "big") + kind + data  # noqa: E731
                                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_bad_images_raise_media_error(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    Image.fromarray(RNG.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:3000])
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    cases = [("junk.jpg", "cannot decode image"), ("cut.png", "truncated"), ("missing.png", "file not found"),
             ("bomb.png", "exceeds|DecompressionBomb")]
    for fname, reason in cases:
        with pytest.raises(M.MediaError, match=reason) as e:
            M.process_image(tmp_path / fname)
        assert e.value.path == str(tmp_path / fname)
    with pytest.raises(M.MediaError, match="exceeds the decode budget of 10000 pixels"):
        M.open_image(tmp_path / "ok.png", M.ImageConfig(max_input_pixels=10_000))


def test_media_error_pickles():
    """Grain worker processes hand a record's MediaError back pickled: it must keep its path and reason (a round
    trip of an object made here, not the loading of outside data)."""
    e = pickle.loads(pickle.dumps(M.MediaError("/x.mp4", "no video stream")))
    assert (e.path, e.reason, str(e)) == ("/x.mp4", "no video stream", "/x.mp4: no video stream")


def test_config_defaults_are_the_reference_env():
    env = {"MAX_PIXELS": "131072", "VIDEO_MAX_PIXELS": "12288", "FPS": "1", "FPS_MAX_FRAMES": "20"}
    assert M.MediaConfig.from_env(env) == M.MediaConfig()
    assert M.MediaConfig.grpo().video.fps_max_frames == 8
    assert M.MediaConfig.from_env({}).video == M.VideoConfig(fps=2.0, fps_max_frames=768, max_pixels=602112)


# ---------------------------------------------------------------- video frame rules (hand-computed from the formulas)

@pytest.mark.parametrize("total,video_fps,cfg,want_n,want_idx", [
    (30, 10, M.VideoConfig(), 4, [0, 10, 19, 29]),  # 3 s -> 3 frames, raised to FPS_MIN_FRAMES 4
    (300, 30, M.VideoConfig(), 10, [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]),
    (1800, 30, M.VideoConfig(), 20, None),  # 60 s capped at FPS_MAX_FRAMES 20
    (1800, 30, M.VideoConfig(fps_max_frames=8), 8, [0, 257, 514, 771, 1028, 1285, 1542, 1799]),  # GRPO
    (25, 25, M.VideoConfig(), 4, [0, 8, 16, 24]),
    (3, 30, M.VideoConfig(), 2, [0, 2]),  # max_frames = floor2(min(20, 3)) = 2
    (7, 1, M.VideoConfig(), 6, [0, 1, 2, 4, 5, 6]),  # 7 -> floor2 -> 6
    (300, 30, M.VideoConfig(fps=2.0, fps_max_frames=768), 20, None),  # qwen-omni-utils defaults
])
def test_smart_nframes_and_indices(total, video_fps, cfg, want_n, want_idx):
    n = M.smart_nframes(total, video_fps, cfg)
    assert n == want_n
    if want_idx is not None:
        assert M.frame_indices(total, n).tolist() == want_idx


def test_too_few_frames_raise():
    with pytest.raises(ValueError, match="nframes should in interval"):
        M.smart_nframes(1, 30)


def test_frame_indices_equal_torch_linspace_round():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for _ in range(500):
        total = int(rng.integers(2, 200000))
        n = int(rng.integers(1, min(total, 768) // 2 + 1)) * 2
        want = torch.linspace(0, total - 1, n).round().long().numpy()
        np.testing.assert_array_equal(M.frame_indices(total, n), want, err_msg=f"{total=} {n=}")


@pytest.mark.parametrize("hw,n,cfg,want", [
    ((48, 64), 4, M.VideoConfig(), (280, 392)),  # min-pixel floor 100352 beats VIDEO_MAX_PIXELS=12288
    ((1080, 1920), 20, M.VideoConfig(), (224, 420)),  # capped at int(100352 * 1.05) = 105369
    ((48, 64), 4, M.VideoConfig(min_pixels=3136), (56, 56)),
    ((720, 1280), 20, M.VideoConfig(min_pixels=3136), (56, 140)),  # VIDEO_MAX_PIXELS 12288 binds
    ((1080, 1920), 20, M.VideoConfig(min_pixels=3136, max_pixels=122880, total_pixels=200000), (84, 168)),  # total
])
def test_video_frame_size(hw, n, cfg, want):
    assert M.video_frame_size(*hw, n, cfg) == want


def test_resize_frame_matches_torchvision_antialias_bicubic():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for (h, w, oh, ow) in [(48, 64, 280, 392), (300, 500, 84, 140), (37, 291, 28, 280), (97, 131, 97, 56)]:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        want = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True)
        want = want.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        diff = np.abs(M.resize_frame(frame, oh, ow).astype(int) - want.astype(int))
        # ATen's float rounding is not reproduced bit for bit: rare 1-level flips (measured 1.9e-5 of values overall)
        assert diff.max() <= 1 and (diff > 0).mean() < 3e-4, (h, w, oh, ow, diff.max(), (diff > 0).mean())


def test_patch_layout_rows_t_block_2x2_cols_c_t_y_x():
    frames = RNG.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    cfg = M.VideoConfig(min_pixels=3136)
    pv, grid, spg, times = M.video_to_patches(list(frames), cfg)
    assert grid.tolist() == [2, 4, 6] and pv.shape == (48, 1176) and spg == 1.0
    x = M._normalize(frames)
    t, bh, bw, mh, mw, c, tp, y, xx = np.meshgrid(*(np.arange(k) for k in (2, 2, 3, 2, 2, 3, 2, 14, 14)), indexing="ij")
    row = (((t * 2 + bh) * 3 + bw) * 2 + mh) * 2 + mw
    col = ((c * 2 + tp) * 14 + y) * 14 + xx
    np.testing.assert_array_equal(pv[row, col], x[t * 2 + tp, (bh * 2 + mh) * 14 + y, (bw * 2 + mw) * 14 + xx, c])
    # an odd frame count repeats the last frame in the second temporal slot
    pv3, grid3, _, times3 = M.video_to_patches(list(frames[:3]), cfg)
    assert grid3.tolist() == [2, 4, 6] and times3.tolist() == [0.0, 1.0, 2.0, 2.0]
    last = pv3[24:].reshape(24, 3, 2, 196)
    np.testing.assert_array_equal(last[:, :, 0], last[:, :, 1])


def test_video_file_matches_reference_pipeline(media_dir):
    torch = pytest.importorskip("torch")
    path = media_dir / "square.mp4"
    pv, grid, spg, times = M.video_to_patches(path)
    assert grid.tolist() == [2, 20, 28] and pv.shape == (1120, 1176) and spg == 1.0
    np.testing.assert_allclose(times, [0.0, 1.0, 1.9, 2.9], atol=1e-6)
    assert M.video_to_patches(path, M.VideoConfig(processor_fps=None))[2] == pytest.approx(2 / (4 / 30 * 10))
    # Independent reference: torchvision-style decode (PyAV rgb24), torch.linspace pick, torch antialias bicubic,
    # HF video processor's fused normalisation and view/permute patchify.
    with av.open(str(path)) as c:
        allf = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    v = torch.from_numpy(allf[torch.linspace(0, len(allf) - 1, 4).round().long().numpy()]).permute(0, 3, 1, 2).float()
    v = torch.nn.functional.interpolate(v, size=(280, 392), mode="bicubic", align_corners=False, antialias=True)
    v = v.clamp(0, 255).round()
    mean, std = torch.tensor(M.CLIP_MEAN.tolist()) * 255.0, torch.tensor(M.CLIP_STD.tolist()) * 255.0
    v = (v - mean[:, None, None]) / std[:, None, None]
    v = v.view(2, 2, 3, 10, 2, 14, 14, 2, 14).permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(1120, 1176).numpy()
    diff = np.abs(pv - v)
    assert (diff > 1e-5).mean() < 1e-3 and diff.max() < 0.016, (diff.max(), (diff > 1e-5).mean())


def test_audio_in_video(media_dir):
    wave = M.extract_audio_track(media_dir / "square_audio.mp4")
    assert wave.dtype == np.float32 and abs(len(wave) - 48000) < 800  # AAC priming adds a few hundred samples
    spec = np.abs(np.fft.rfft(wave))
    assert abs(spec.argmax() * 16000 / len(wave) - 440) < 2
    assert M.extract_audio_track(media_dir / "square.mp4") is None


@pytest.mark.parametrize("fname,reason", [
    ("truncated.mp4", "cannot decode video"), ("corrupt.mp4", "cannot decode video"),
    ("missing.mp4", "file not found")])
def test_bad_videos_raise_media_error(media_dir, fname, reason):
    with pytest.raises(M.MediaError, match=reason) as e:
        M.video_to_patches(media_dir / fname)
    assert e.value.path == str(media_dir / fname)
    with pytest.raises(M.MediaError):
        M.extract_audio_track(media_dir / fname)


# ---------------------------------------------------------------- audio

def test_load_audio_and_bad_wavs(tmp_path):
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "stereo.wav", np.stack([np.sin(2 * np.pi * 300 * t)] * 2, 1) * 0.3, 44100)
    wave = M.load_audio(tmp_path / "stereo.wav")
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file" * 10)
    for fname, reason in [("empty.wav", "zero-length"), ("nan.wav", "non-finite"), ("junk.wav", "cannot decode audio"),
                          ("missing.wav", "file not found")]:
        with pytest.raises(M.MediaError, match=reason) as e:
            M.load_audio(tmp_path / fname)
        assert e.value.path == str(tmp_path / fname)


def test_mel_filters_equal_hf():
    from transformers import WhisperFeatureExtractor

    np.testing.assert_array_equal(M.mel_filter_bank(), WhisperFeatureExtractor(feature_size=128).mel_filters)


@pytest.mark.parametrize("n", [1, 150, 5281, 160_000, 4_800_000, 4_900_123])
def test_whisper_features_equal_hf(n):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300)
    rng = np.random.default_rng(n)
    wave = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    wave[: n // 10] *= 0.01  # quiet start: the -8 clamp must use the max of the whole clip
    out = fe(wave, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
    n_valid = int(out["attention_mask"][0].sum())
    start = time.perf_counter()
    feats, got_valid = M.whisper_features(wave)
    elapsed = time.perf_counter() - start
    assert got_valid == n_valid == min(-(-n // 160), 30000) and feats.shape == (128, n_valid)
    assert feats.dtype == np.float32
    # HF runs a float32 torch STFT; ours is float64 (equal to a float64 torch STFT to 6e-8). Measured max 7.5e-5.
    np.testing.assert_allclose(feats, out["input_features"][0][:, :n_valid], atol=1e-4, rtol=0)
    assert elapsed < 2.0, f"{n} samples took {elapsed:.2f} s"


def test_whisper_features_reject_empty():
    with pytest.raises(ValueError):
        M.whisper_features(np.zeros(0, np.float32))
