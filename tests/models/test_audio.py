"""Audio tower parity against a tiny re-randomised HF thinker (fp32 eager), plus host-helper, padding, jit and
checkpoint round-trip checks."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from omnirrm_jax.models import audio, config, params
from tests.hf_tiny import tiny_hf_thinker, to_np

ATOL = 1e-5


def _build(seed, n_window):
    hf = tiny_hf_thinker(seed, n_window=n_window)
    cfg = config.from_hf_dict(hf.config.to_dict())
    enc = audio.AudioEncoder(cfg, rngs=nnx.Rngs(0))
    tensors = {f"audio_tower.{k}": to_np(v) for k, v in hf.model.audio_tower.state_dict().items()}
    params.assign_hf_tensors(enc, tensors, prefix="audio_tower.")
    return hf, cfg, enc, tensors


@pytest.fixture(scope="module")
def small():
    """n_window 4: chunks of 8 mel frames, so short inputs already give many chunks."""
    return _build(0, 4)


@pytest.fixture(scope="module")
def default():
    return _build(1, 100)


@pytest.fixture(scope="module")
def jitted():
    def make(enc):
        graphdef, state = nnx.split(enc)
        fn = jax.jit(lambda s, c, a: nnx.merge(graphdef, s)(c, a))
        return lambda chunks, aux: fn(state, chunks, aux)
    return make


def _features(lens, mel=128, seed=0):
    return np.random.default_rng(seed).standard_normal((mel, int(sum(lens)))).astype(np.float32)


def _hf_tower(hf, feats, lens):
    with torch.no_grad():
        out = hf.model.audio_tower(torch.from_numpy(feats), feature_lens=torch.tensor(lens, dtype=torch.long))
    return to_np(out.last_hidden_state)


@pytest.mark.parametrize("lens", [[3], [7], [8], [9], [4], [12], [17], [2, 3, 7, 8, 9, 12, 17, 1, 24, 10]],
                         ids=lambda v: "-".join(map(str, v)))
def test_tower_matches_hf_small_window(small, jitted, lens):
    hf, cfg, enc, _ = small
    feats = _features(lens, seed=sum(lens))
    ref = _hf_tower(hf, feats, lens)
    chunks, aux = audio.prepare_audio(feats, None, cfg.audio, feature_lens=lens)
    got = np.asarray(jitted(enc)(chunks, aux))
    assert got.shape == ref.shape == (int(sum(audio.audio_token_count(np.array(lens)))), cfg.audio.output_dim)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def test_tower_matches_hf_default_window(default, jitted):
    hf, cfg, enc, _ = default
    lens = [3, 199, 200, 201, 57]
    feats = _features(lens, seed=1)
    ref = _hf_tower(hf, feats, lens)
    chunks, aux = audio.prepare_audio(feats, None, cfg.audio, feature_lens=lens)
    assert chunks.shape == (6, 128, 200)
    np.testing.assert_allclose(np.asarray(jitted(enc)(chunks, aux)), ref, atol=ATOL, rtol=0)


def test_thinker_level_batched_features(small, jitted):
    """HF's batched form (n_audio, mel, frames) + feature_attention_mask, as the processor emits it."""
    hf, cfg, enc, _ = small
    lens, frames = [13, 3, 30, 8], 32
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((len(lens), 128, frames)).astype(np.float32)
    mask = (np.arange(frames)[None] < np.array(lens)[:, None]).astype(np.int64)
    with torch.no_grad():
        ref = to_np(hf.model.get_audio_features(torch.from_numpy(feats),
                                                feature_attention_mask=torch.from_numpy(mask)).last_hidden_state)
    chunks, aux = audio.prepare_audio(feats, mask, cfg.audio)
    np.testing.assert_allclose(np.asarray(jitted(enc)(chunks, aux)), ref, atol=ATOL, rtol=0)


def test_padding_keeps_real_outputs(small, jitted):
    hf, cfg, enc, _ = small
    lens = [9, 3, 20]
    feats = _features(lens, seed=11)
    chunks, aux = audio.prepare_audio(feats, None, cfg.audio, feature_lens=lens)
    n_c, n_u = chunks.shape[0], aux["pool_index"].shape[0]
    pchunks, paux = audio.prepare_audio(feats, None, cfg.audio, feature_lens=lens, pad_chunks_to=n_c + 3,
                                        pad_tokens_to=n_u + 5)
    assert pchunks.shape[0] == n_c + 3 and paux["token_mask"].sum() == n_u
    plain = np.asarray(jitted(enc)(chunks, aux))
    padded = np.asarray(jitted(enc)(pchunks, paux))
    # Same math; XLA may tile a different chunk count differently, so allow a few fp32 ulps.
    np.testing.assert_allclose(padded[:n_u], plain, atol=5e-6, rtol=0)
    np.testing.assert_array_equal(padded[n_u:], 0.0)
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded[:n_u], _hf_tower(hf, feats, lens), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="chunks"):
        audio.prepare_audio(feats, None, cfg.audio, feature_lens=lens, pad_chunks_to=n_c - 1)
    with pytest.raises(ValueError, match="tokens"):
        audio.audio_aux(np.array(lens), cfg.audio, pad_tokens_to=n_u - 1)


def test_gradients_finite_with_padding(small):
    """Padding chunks must not put NaN into parameter gradients (they have no valid frame)."""
    _, cfg, enc, _ = small
    chunks, aux = audio.prepare_audio(_features([10]), None, cfg.audio, feature_lens=[10], pad_chunks_to=4,
                                      pad_tokens_to=6)
    graphdef, state = nnx.split(enc)
    grads = jax.jit(jax.grad(lambda s: nnx.merge(graphdef, s)(chunks, aux).sum()))(state)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_token_count_matches_hf(small):
    hf, *_ = small
    L = np.arange(0, 700)
    _, ref = hf.model.audio_tower._get_feat_extract_output_lengths(torch.from_numpy(L))
    np.testing.assert_array_equal(audio.audio_token_count(L), ref.numpy())
    assert audio.audio_token_count(1000) == 250 and audio.audio_token_count(30000) == 7500


def test_aux_pool_pairs_straddle_chunks():
    """Odd n_window: a pooled pair can span two chunks; indices address the flattened (C*T) grid."""
    acfg = config.AudioConfig(n_window=3)
    aux = audio.audio_aux(np.array([11, 5]), acfg)
    # audio 0: chunks 6, 5 -> 3 + 3 valid frames -> pairs (0,1) (2,3) (4,5); audio 1: chunk 5 -> 3 frames -> (6,7)
    np.testing.assert_array_equal(aux["chunk_lens"], [6, 5, 5])
    np.testing.assert_array_equal(aux["pool_index"], [[0, 1], [2, 3], [4, 5], [6, 7]])


def test_checkpoint_round_trip_bit_exact(small):
    _, _, enc, tensors = small
    back = params.module_to_hf_tensors(enc, prefix="audio_tower.")
    assert set(back) == set(tensors) and "audio_tower.audio_bos_eos_token.weight" in back
    for name, value in tensors.items():
        np.testing.assert_array_equal(np.asarray(back[name]), value, err_msg=name)
