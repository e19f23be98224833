"""Tiny random Hugging Face Qwen2.5-Omni thinkers: the numerical reference for the parity tests.

Every parameter is overwritten with random values (norm weights ~ 1 + noise, biases non-zero) so that a
dropped weight or bias cannot hide. Nothing is downloaded.
"""
from __future__ import annotations

import functools

import numpy as np

TINY_IDS = dict(audio_token_index=500, image_token_index=501, video_token_index=502, audio_start_token_id=503,
                audio_end_token_id=504, vision_start_token_id=505, vision_end_token_id=506)


def tiny_hf_config(*, n_window: int = 4, patch_size: int = 14, window_size: int = 112, tie: bool = False,
                   vocab_size: int = 512):
    from transformers import Qwen2_5OmniThinkerConfig

    cfg = Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                           fullatt_block_indexes=[1], patch_size=patch_size, window_size=window_size),
        audio_config=dict(encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64,
                          output_dim=64, n_window=n_window),
        tie_word_embeddings=tie, **TINY_IDS)
    cfg._attn_implementation = "eager"
    for sub in (cfg.text_config, cfg.vision_config, cfg.audio_config):
        sub._attn_implementation = "eager"
    return cfg


def randomize_(module, seed: int = 0) -> None:
    """Overwrites every parameter in place: weights N(0, 0.2), biases N(0, 0.1), 1-D norm weights 1 + N(0, 0.1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def tiny_hf_thinker(seed: int = 0, **kw):
    """A re-randomised fp32 eager HF thinker in eval mode."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(tiny_hf_config(**kw)).eval()
    randomize_(model, seed)
    return model


@functools.lru_cache(maxsize=4)
def saved_tiny_thinker(tmp_root: str, seed: int = 0, tie: bool = False) -> str:
    """Saves a tiny thinker with `save_pretrained` once per session and returns its directory."""
    import os

    path = os.path.join(tmp_root, f"tiny_thinker_s{seed}_t{int(tie)}")
    if not os.path.exists(os.path.join(path, "config.json")):
        tiny_hf_thinker(seed, tie=tie).save_pretrained(path)
    return path


def to_np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()
