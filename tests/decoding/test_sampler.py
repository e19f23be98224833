"""The decoding engine against transformers: greedy `generate` token for token on left-padded batches of
every modality, HF's sampling warpers, the sampled distribution (chi-square), the returned log-probs
(teacher-forced HF forward + HF warpers), one shared prefill for G samples, and no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.compile_count import count_compiles
from omnirrm_jax.decoding import sampler as SM
from tests.chi2 import chi2_pvalue
from omnirrm_jax.models import audio as audio_lib
from omnirrm_jax.models import params as P
from omnirrm_jax.models import thinker as thinker_lib
from omnirrm_jax.models import vision as vision_lib
from omnirrm_jax.models.audio import audio_token_count
from tests.hf_tiny import saved_tiny_thinker, to_np
from tests.models.test_thinker import (AEOS, ABOS, AUD, IMG, PAD, VBOS, VEOS, VID, _audio_feats, _left_pad, _text,
                                       batch_audio_in_video)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    path = saved_tiny_thinker(str(tmp_path_factory.mktemp("hf")), seed=5)
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    ours, cfg = P.load_hf(path)
    return hf, ours, cfg


def batch_one_per_modality(rng, cfg):
    """Four left-padded rows: text only, image, video (2 frames, 0.5 s/grid), audio."""
    img_grid, vid_grid, lens = np.array([[1, 4, 4]]), np.array([[2, 4, 4]]), [37]
    rows = [_text(rng, 9),
            _text(rng, 3) + [VBOS] + [IMG] * 4 + [VEOS] + _text(rng, 2),
            _text(rng, 2) + [VBOS] + [VID] * 8 + [VEOS] + _text(rng, 4),
            _text(rng, 4) + [ABOS] + [AUD] * audio_token_count(lens[0]) + [AEOS] + _text(rng, 3)]
    ids, mask = _left_pad(rows)
    feats, fmask = _audio_feats(rng, lens)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=rng.normal(size=(16, 1176)).astype(np.float32),
                image_grid_thw=img_grid, pixel_values_videos=rng.normal(size=(32, 1176)).astype(np.float32),
                video_grid_thw=vid_grid, video_second_per_grid=np.array([0.5]), input_features=feats,
                feature_attention_mask=fmask)


def batch_text(rng, cfg, lengths=(7, 11)):
    ids, mask = _left_pad([_text(rng, n) for n in lengths])
    return dict(input_ids=ids, attention_mask=mask)


def _torch(batch):
    return {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


def hf_warp(logits, temperature, top_k, top_p):
    """HF's own warpers, in `_get_logits_processor` order, then log-softmax."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    x = torch.tensor(np.asarray(logits, np.float32))
    if temperature != 1.0:
        x = TemperatureLogitsWarper(float(temperature))(None, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    return torch.log_softmax(x, -1).numpy()




# ----------------------------------------------------------------------------------------------------
# Greedy decoding equals HF generate
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_batch", [batch_one_per_modality, batch_audio_in_video])
def test_greedy_matches_hf_generate_with_stop(models, make_batch):
    hf, ours, cfg = models
    batch = make_batch(np.random.default_rng(0), cfg)
    N, S = 10, batch["input_ids"].shape[1]
    with torch.no_grad():
        free = hf.generate(**_torch(batch), max_new_tokens=N, do_sample=False, eos_token_id=None,
                           pad_token_id=PAD)[:, S:].numpy()
    stop = int(free[0, 3])  # a token row 0 really emits, so at least one row stops early
    hit = free == stop
    want_len = np.where(hit.any(1), hit.argmax(1) + 1, N)
    with torch.no_grad():
        gen = hf.generate(**_torch(batch), max_new_tokens=N, do_sample=False, eos_token_id=stop, pad_token_id=PAD,
                          return_dict_in_generate=True, output_logits=True)
    hf_tok = gen.sequences[:, S:].numpy()
    hf_logp = np.stack([torch.log_softmax(l.float(), -1).numpy() for l in gen.logits], 1)

    res = SM.generate(ours, thinker_lib.prepare_inputs(cfg, **batch),
                      SM.SamplingConfig(N, greedy=True, stop_token_ids=(stop,), pad_token_id=PAD), jax.random.key(0))
    tok, logp = np.asarray(res.tokens)[:, 0], np.asarray(res.logprobs)[:, 0]
    L = hf_tok.shape[1]
    np.testing.assert_array_equal(tok[:, :L], hf_tok, err_msg="greedy tokens differ from HF generate")
    np.testing.assert_array_equal(np.asarray(res.lengths)[:, 0], want_len)
    np.testing.assert_array_equal(np.asarray(res.finished)[:, 0], hit.any(1))
    assert want_len.min() < N
    for b, n in enumerate(want_len):
        assert (tok[b, n:] == PAD).all() and (logp[b, n:] == 0).all(), f"row {b}: no pad/zero logprob after stop"
        np.testing.assert_allclose(logp[b, :n], np.take_along_axis(hf_logp[b, :n], tok[b, :n, None], -1)[:, 0],
                                   atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Filters and the sampled distribution
# ----------------------------------------------------------------------------------------------------

FILTERS = [(0.7, 20, 0.9), (1.0, 0, 0.8), (1.3, 50, 1.0), (0.5, 0, 1.0), (1.0, 5, 0.3), (0.9, 1000, 0.95),
           (1.0, 0, 0.0), (2.0, 0, 0.99)]


@pytest.mark.parametrize("temperature,top_k,top_p", FILTERS)
def test_filter_logits_equals_hf_warpers(temperature, top_k, top_p):
    logits = np.random.default_rng(top_k).normal(size=(6, 512)).astype(np.float32) * 3
    got = np.asarray(SM.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
    want = hf_warp(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg="kept support differs from HF")
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=2e-5)


def test_top_k_keeps_ties_like_hf():
    logits = np.random.default_rng(0).integers(0, 6, size=(4, 64)).astype(np.float32)  # many exact ties
    got = np.asarray(SM.filter_logits(jnp.asarray(logits), 1.0, 7, 1.0))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(hf_warp(logits, 1.0, 7, 1.0)))
    assert (np.isfinite(got).sum(-1) > 7).all()


def test_top_p_boundary_semantics():
    """Exact boundaries: HF removes a token when the ascending cumsum is <= 1 - top_p (dyadic probabilities
    make the sums exact). Ties at the boundary: HF's pick follows torch.sort's order (unstable on
    vocab-sized rows), we keep the whole tied group."""
    logits = np.log(np.array([[0.5, 0.25, 0.125, 0.125]], np.float32))
    for top_p in (0.5, 0.75):
        got = np.isfinite(np.asarray(SM.filter_logits(jnp.asarray(logits), 1.0, 0, top_p)))
        np.testing.assert_array_equal(got, np.isfinite(hf_warp(logits, 1.0, 0, top_p)), err_msg=f"top_p {top_p}")
    got = np.isfinite(np.asarray(SM.filter_logits(jnp.asarray(logits), 1.0, 0, 0.875)))
    np.testing.assert_array_equal(got, [[True, True, True, True]])  # HF: one of the two 0.125 tokens


def _tied_group_reference(logits, temperature, top_k, top_p):
    """numpy float64 statement of our rule: top-k by threshold, then keep i iff mass(x <= x_i) > 1 - top_p."""
    x = logits.astype(np.float64) / temperature
    if top_k:
        x = np.where(x < np.sort(x, -1)[..., -min(top_k, x.shape[-1]), None], -np.inf, x)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tail = (p[..., None, :] * (x[..., None, :] <= x[..., :, None])).sum(-1)
    return np.isfinite(x) & ((tail > 1 - top_p) | (x == x.max(-1, keepdims=True)))


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (10, 0.7), (25, 0.9), (3, 0.95), (40, 0.3)])
def test_ties_keep_whole_group_and_contain_hf(top_k, top_p):
    logits = np.random.default_rng(top_k).integers(0, 12, size=(64, 96)).astype(np.float32) / 2
    got = np.isfinite(np.asarray(SM.filter_logits(jnp.asarray(logits), 0.8, top_k, top_p)))
    np.testing.assert_array_equal(got, _tied_group_reference(logits, 0.8, top_k, top_p))
    hf = np.isfinite(hf_warp(logits, 0.8, top_k, top_p))
    assert (got | ~hf).all(), "HF kept a token we dropped"


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 20, 0.9), (1.0, 0, 0.8), (1.3, 50, 1.0), (0.5, 0, 1.0)])
def test_sampled_frequencies_match_filtered_distribution(temperature, top_k, top_p):
    V, n = 512, 20000
    logits = np.random.default_rng(1).normal(size=V).astype(np.float32) * 2.5
    sampling = SM.SamplingConfig(1, temperature=temperature, top_k=top_k, top_p=top_p)
    tok, lp = jax.jit(SM.sample_tokens, static_argnames="sampling")(
        jax.random.key(7), jnp.broadcast_to(jnp.asarray(logits), (n, V)), sampling=sampling)
    tok, lp = np.asarray(tok), np.asarray(lp)
    logp = hf_warp(logits[None], temperature, top_k, top_p)[0]
    assert np.isfinite(logp[tok]).all(), "sampled a token outside the filtered support"
    np.testing.assert_allclose(lp, logp[tok], atol=2e-5)
    p = chi2_pvalue(np.bincount(tok, minlength=V), np.exp(logp.astype(np.float64)))
    assert p > 1e-4, f"sampled frequencies do not fit the filtered distribution (chi-square p = {p:.2e})"


def test_generate_first_token_distribution_matches_hf(models):
    """2 prompts x G=2000 samples of the first token against HF's prefill logits pushed through HF's warpers."""
    hf, ours, cfg = models
    batch = batch_text(np.random.default_rng(2), cfg)
    sampling = SM.SamplingConfig(1, temperature=0.7, top_k=20, top_p=0.9, num_samples=2000, stop_token_ids=())
    res = SM.generate(ours, thinker_lib.prepare_inputs(cfg, **batch), sampling, jax.random.key(3))
    with torch.no_grad():
        last = to_np(hf(**_torch(batch)).logits[:, -1])
    for b in range(2):
        logp = hf_warp(last[b:b + 1], 0.7, 20, 0.9)[0]
        tok = np.asarray(res.tokens)[b, :, 0]
        assert np.isfinite(logp[tok]).all()
        np.testing.assert_allclose(np.asarray(res.logprobs)[b, :, 0], logp[tok], atol=1e-4)
        p = chi2_pvalue(np.bincount(tok, minlength=logp.size), np.exp(logp.astype(np.float64)))
        assert p > 1e-4, f"prompt {b}: chi-square p = {p:.2e}"


# ----------------------------------------------------------------------------------------------------
# Sampled sequences: log-probs, stopping, shared prefill, compilation
# ----------------------------------------------------------------------------------------------------

def test_logprobs_equal_hf_filtered_distribution_and_stop_keeps_prefix(models):
    """Every sampled token's log-prob equals HF's warped log-softmax of a teacher-forced HF forward over
    prompt + sampled tokens; then stopping on a sampled token (same key) leaves the prefix unchanged."""
    hf, ours, cfg = models
    batch = batch_text(np.random.default_rng(4), cfg)
    inputs = thinker_lib.prepare_inputs(cfg, **batch)
    (B, S), G, N = batch["input_ids"].shape, 3, 6
    kw = dict(temperature=0.7, top_k=20, top_p=0.9, num_samples=G, pad_token_id=PAD)
    res = SM.generate(ours, inputs, SM.SamplingConfig(N, stop_token_ids=(), **kw), jax.random.key(11))
    tok = np.asarray(res.tokens).reshape(B * G, N)
    assert np.asarray(res.lengths).min() == N and not np.asarray(res.finished).any()

    ids = np.concatenate([np.repeat(batch["input_ids"], G, 0), tok], 1)
    mask = np.concatenate([np.repeat(batch["attention_mask"], G, 0), np.ones_like(tok)], 1)
    with torch.no_grad():
        logits = to_np(hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, S - 1:-1])
    logp = hf_warp(logits.reshape(-1, logits.shape[-1]), 0.7, 20, 0.9).reshape(logits.shape)
    want = np.take_along_axis(logp, tok[..., None], -1)[..., 0]
    assert np.isfinite(want).all(), "a sampled token lies outside HF's filtered support"
    np.testing.assert_allclose(np.asarray(res.logprobs).reshape(B * G, N), want, atol=1e-4)

    stop = int(tok[0, 2])
    stopped = SM.generate(ours, inputs, SM.SamplingConfig(N, stop_token_ids=(stop,), **kw), jax.random.key(11))
    s_tok, s_lp = np.asarray(stopped.tokens).reshape(B * G, N), np.asarray(stopped.logprobs).reshape(B * G, N)
    for r in range(B * G):
        hit = np.flatnonzero(tok[r] == stop)
        n = hit[0] + 1 if hit.size else N
        assert np.asarray(stopped.lengths).reshape(-1)[r] == n
        assert np.asarray(stopped.finished).reshape(-1)[r] == bool(hit.size)
        np.testing.assert_array_equal(s_tok[r, :n], tok[r, :n])
        assert (s_tok[r, n:] == PAD).all() and (s_lp[r, n:] == 0).all()
    assert np.asarray(stopped.lengths)[0, 0] <= 3


def test_samples_share_one_prefill_and_do_not_recompile(models, monkeypatch):
    """Traced once: each tower sees the B prompts' media once (not G times), the prefill runs on B rows and
    the decode step on B*G rows. A second call (new key, same shapes) neither traces nor compiles."""
    _, ours, cfg = models
    batch = batch_one_per_modality(np.random.default_rng(6), cfg)
    # 3 more left-padding columns: a prompt length unique in the session, so the prefill must trace too
    batch["input_ids"] = np.pad(batch["input_ids"], ((0, 0), (3, 0)), constant_values=PAD)
    batch["attention_mask"] = np.pad(batch["attention_mask"], ((0, 0), (3, 0)))
    inputs = thinker_lib.prepare_inputs(cfg, **batch)
    B, S = batch["input_ids"].shape
    G, N = 4, 5
    calls = []

    def spy(cls, name, tag, arg=0):
        orig = getattr(cls, name)

        def wrapped(self, *a, **k):
            calls.append((tag, tuple(a[arg].shape)))
            return orig(self, *a, **k)
        monkeypatch.setattr(cls, name, wrapped)

    spy(vision_lib.VisionEncoder, "__call__", "visual")
    spy(audio_lib.AudioEncoder, "__call__", "audio")
    spy(thinker_lib.Thinker, "decode_step", "decode")
    orig_forward = thinker_lib.Thinker.forward
    monkeypatch.setattr(thinker_lib.Thinker, "forward", lambda self, x, **k: (
        calls.append(("prefill", tuple(x["input_ids"].shape))), orig_forward(self, x, **k))[1])

    # a SamplingConfig unique in the session, so the first call must trace; the high temperature makes the
    # whole vocab near-uniform, so reusing one step's Gumbel noise at the next step would repeat its token
    sampling = SM.SamplingConfig(N, temperature=997.0, top_k=0, top_p=1.0, num_samples=G, stop_token_ids=())
    first = SM.generate(ours, inputs, sampling, jax.random.key(0))
    assert sorted(calls) == sorted([("visual", inputs["pixel_values"].shape),
                                    ("visual", inputs["pixel_values_videos"].shape),
                                    ("audio", inputs["audio_chunks"].shape),
                                    ("prefill", (B, S)), ("decode", (B * G, 1))]), calls
    tok = np.asarray(first.tokens)
    assert tok.shape == (B, G, N) and np.asarray(first.logprobs).shape == (B, G, N)
    for b in range(B):
        assert len({tuple(t) for t in tok[b]}) == G, f"prompt {b}: the {G} samples are not all distinct"
    assert len({tuple(tok[b].reshape(-1)) for b in range(B)}) == B
    assert (tok != tok[..., :1]).any(-1).all(), "a row repeated one token at every step: stale randomness?"

    other = nnx.clone(ours)  # same architecture, other weights: must reuse the program (params are arguments)
    other.lm_head.kernel[...] = -other.lm_head.kernel[...]
    n_calls = len(calls)
    with count_compiles() as compiles:
        second = SM.generate(ours, inputs, sampling, jax.random.key(1))
        again = SM.generate(ours, inputs, sampling, jax.random.key(0))
        flipped = SM.generate(other, inputs, sampling, jax.random.key(0))
        jax.block_until_ready((second, again, flipped))
    assert len(calls) == n_calls, "generate was traced again for the same shapes"
    assert compiles == [], f"recompiled: {compiles}"
    assert not np.array_equal(np.asarray(second.tokens), tok)
    np.testing.assert_array_equal(np.asarray(again.tokens), tok)  # same key, same samples
    # (near-uniform sampling may pick the same tokens; their log-probs must move with the weights)
    assert np.abs(np.asarray(flipped.logprobs) - np.asarray(first.logprobs)).max() > 1e-4, \
        "weights were baked into the compiled program"


def test_rejects_right_padding(models):
    _, ours, cfg = models
    batch = batch_text(np.random.default_rng(0), cfg)
    inputs = thinker_lib.prepare_inputs(cfg, **batch)
    inputs["attention_mask"] = inputs["attention_mask"][:, ::-1].copy()
    with pytest.raises(ValueError, match="left-padded"):
        SM.generate(ours, inputs, SM.SamplingConfig(2), jax.random.key(0))


def test_rejects_a_gap_in_the_prompt_mask(models):
    _, ours, cfg = models
    inputs = thinker_lib.prepare_inputs(cfg, **batch_text(np.random.default_rng(0), cfg))
    inputs["attention_mask"] = np.asarray(inputs["attention_mask"]).copy()
    inputs["attention_mask"][1, -3] = 0
    with pytest.raises(ValueError, match="gap"):
        SM.generate(ours, inputs, SM.SamplingConfig(2), jax.random.key(0))


@pytest.mark.parametrize("G,kernel", [(4, False), (3, False), (2, True)])
def test_shared_prefix_cache_decodes_as_the_repeated_cache(models, monkeypatch, G, kernel):
    """The G samples reading one copy of their prompt's keys/values (`shared_prefix="on"`: XLA einsums, or the
    Pallas kernel, interpreted on CPU) draw the same tokens with the same log-probs as a cache copy per sample,
    on left-padded image/video/audio prompts, sampled and greedy."""
    from omnirrm_jax.decoding import shared_prefix as SP

    _, ours, cfg = models
    inputs = thinker_lib.prepare_inputs(cfg, **batch_one_per_modality(np.random.default_rng(8), cfg))
    traced = []
    if kernel:
        kernel_fn = SP._pallas_attention
        monkeypatch.setattr(SP, "_pallas_attention", lambda *a, **k: (traced.append(1), kernel_fn(*a, **k))[1])
    for greedy in (False, True):
        # a temperature no other test uses: the decode program is traced here, not taken from the jit cache
        kw = dict(temperature=0.813, top_k=30, top_p=0.9, num_samples=G, greedy=greedy, stop_token_ids=())
        off = SM.generate(ours, inputs, SM.SamplingConfig(5, shared_prefix="off", **kw), jax.random.key(2))
        # the kernel: "auto" takes the shared cache because the kernel is asked for (on CPU it is interpreted)
        on_kw = dict(shared_prefix="auto", shared_prefix_kernel="pallas") if kernel else dict(shared_prefix="on")
        on = SM.generate(ours, inputs, SM.SamplingConfig(5, **on_kw, **kw), jax.random.key(2))
        np.testing.assert_array_equal(np.asarray(on.tokens), np.asarray(off.tokens))
        np.testing.assert_allclose(np.asarray(on.logprobs), np.asarray(off.logprobs), atol=2e-5)
    assert bool(traced) == kernel


def test_auto_falls_back_when_the_kernel_fails(models, monkeypatch, caplog):
    """shared_prefix="auto": a kernel that fails to compile is reported and decoding goes on with a cache copy
    per sample (the same samples); "on" raises."""
    from omnirrm_jax.decoding import shared_prefix as SP

    _, ours, cfg = models
    inputs = thinker_lib.prepare_inputs(cfg, **batch_text(np.random.default_rng(3), cfg))

    def broken(*a, **k):
        raise RuntimeError("triton lowering failed")

    monkeypatch.setattr(SP, "_pallas_attention", broken)
    monkeypatch.setattr(SM, "_KERNEL_FAILED", [])
    kw = dict(temperature=0.777, num_samples=2, stop_token_ids=(), shared_prefix_kernel="pallas")
    want = SM.generate(ours, inputs, SM.SamplingConfig(4, shared_prefix="off", **kw), jax.random.key(5))
    with caplog.at_level("WARNING"):
        got = SM.generate(ours, inputs, SM.SamplingConfig(4, shared_prefix="auto", **kw), jax.random.key(5))
    assert "shared-prefix decode kernel failed" in caplog.text and SM._KERNEL_FAILED
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    with pytest.raises(RuntimeError, match="triton lowering failed"):
        SM.generate(ours, inputs, SM.SamplingConfig(4, shared_prefix="on", **kw), jax.random.key(5))
