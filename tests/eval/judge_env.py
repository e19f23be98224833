"""A tiny judging setup shared by the eval tests: a tokenizer that can spell the reference judge prompts
(SentencePiece, saved beside the model; or a byte-level BPE like Qwen's, saved inside the HF dir), a re-randomised
HF Qwen2.5-Omni thinker whose special ids match it, and small media files (56x56 PNG, 1 s 16 kHz wav). Built once
per session; offline."""
from __future__ import annotations

import functools
import os
import wave

import numpy as np

from omnirrm_jax.rubric import format_judgement, prompts

QUESTIONS = ["What colour is the shape?", "Is the tone high or deep?", "What is 3 + 4?"]
ANSWERS = ["blue", "pink", "high", "deep", "7", "5"]


def _corpus() -> list[str]:
    out = []
    for m in prompts.MODALITIES:
        for q in QUESTIONS:
            out.append(prompts.user_content(m, prompts.judge_prompt(m, q, "blue", "pink")))
    for a in range(11):
        for b in range(11):
            v = "A" if a > b else "B" if b > a else "equal"
            out.append(format_judgement(a, b, v, f"Fluency: A and B are fine. Accuracy: {v} is better."))
    return out + ANSWERS


def _hf_config(vocab_size: int, ids: dict):
    from tests.hf_tiny import tiny_hf_config

    cfg = tiny_hf_config(vocab_size=vocab_size)
    names = dict(audio_token_index="audio_token_id", image_token_index="image_token_id",
                 video_token_index="video_token_id", audio_start_token_id="audio_start_token_id",
                 audio_end_token_id="audio_end_token_id", vision_start_token_id="vision_start_token_id",
                 vision_end_token_id="vision_end_token_id")
    for hf_name, ours in names.items():
        setattr(cfg, hf_name, ids[ours])
    return cfg


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from omnirrm_jax.data.tokenizer import SPECIAL_TOKENS, HFTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=1500, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    extra = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                               extra_special_tokens=extra))


@functools.lru_cache(maxsize=4)
def judge_env(root: str, seed: int = 0, kind: str = "sentencepiece") -> dict:
    """{"hf_dir", "tok_path", "tok", "image", "audio"} under `root` (built on first use). kind "bpe" saves the
    tokenizer into the HF dir (tok_path = hf_dir), as real checkpoints ship it."""
    import torch
    from PIL import Image
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from omnirrm_jax.data.tokenizer import thinker_token_ids, train_sentencepiece
    from tests.hf_tiny import randomize_

    os.makedirs(root, exist_ok=True)
    hf_dir = os.path.join(root, "hf")
    if kind == "bpe":
        tok, tok_path = _bpe_tokenizer(), hf_dir
    else:
        tok, tok_path = train_sentencepiece(_corpus(), 1500, os.path.join(root, "tokenizer")), \
            os.path.join(root, "tokenizer.model")
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(_hf_config(tok.vocab_size + 5, thinker_token_ids(tok))).eval()
    randomize_(model, seed)
    model.save_pretrained(hf_dir)
    if kind == "bpe":
        tok.hf.save_pretrained(hf_dir)
    rng = np.random.default_rng(seed)
    image = os.path.join(root, "shape.png")
    pixels = np.full((56, 56, 3), 200, np.uint8)
    pixels[10:40, 12:44] = rng.integers(0, 255, size=3)
    Image.fromarray(pixels).save(image)
    audio = os.path.join(root, "tone.wav")
    t = np.arange(16000) / 16000
    pcm = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(audio, "wb") as w:
        w.setparams((1, 2, 16000, len(pcm), "NONE", "not compressed"))
        w.writeframes(pcm.tobytes())
    return {"hf_dir": hf_dir, "tok_path": tok_path, "tok": tok, "image": image,
            "audio": audio}
