"""A bound on one GRPO step from the card's measured speeds, printed by `omnirrm bench grpo` beside the
measured step so that the gap between them is a number, part by part.

Each part at the best rate this card has shown for its kind of work:
  rollout    prefill of the B prompts at the SFT step's model FLOP/s (compute-bound), then the N - 1 decode steps
             (token 0 comes from the prefill's logits) at the HBM floor of `bench decode`
             (`floor_tokens_per_s` with samples=G: weights and the mean KV cache read once per step, each prompt's
             keys once for its G samples);
  reference  the forward FLOPs of the reference log-probs, at the SFT step's FLOP/s;
  update     forward + backward of a frozen base with LoRA (the FLOPs MFU counts: `training.metrics.
             flops_per_token`), at the SFT step's FLOP/s.

The teacher-forced passes count what `training.grpo_objective` needs at the least, not B·G full rows: each
prompt's S tokens once through the decoder (its KV cache serves its G completions), each row's first N - 1
completion tokens (the last one predicts nothing) attending to the prompt's S keys and the completion's earlier
ones, and the output head on the N positions that predict completion tokens (the prompt's last and N - 1). The code
runs N (or N + 1, for even cuDNN lengths) completion tokens per row; the difference is one token in N. Causal
attention is counted as `flops_per_token` counts it (half the square), QKᵀ and PV at 2 FLOPs per multiply-add.
Remat and the LoRA factors' own FLOPs are not counted, as in MFU.

"The SFT step's FLOP/s" is its MFU times the card's peak: the rate the same kernels reach on a training step of
one row of prompt + completion tokens, so the bound asks for what this card already does, not for the peak.
That makes it the issue's yardstick, not a strict floor: a part whose own shape runs more efficiently than one SFT
row (the update's chunks of 8 rows sharing a prompt) can come in under it (measured/bound < 1). The strict floor,
every FLOP at the card's peak, is printed beside it (`at_peak`).
"""

from __future__ import annotations

from omnirrm_jax.bench.decode import floor_tokens_per_s
from omnirrm_jax.training.metrics import matmul_params


def model_flops(cfg, *, rows: int, cached: int, new: int, head: int, backward: bool = False) -> float:
    """Model FLOPs of `rows` sequences each running `new` tokens through the text decoder after `cached` keys
    already in its cache, with the output head on `head` positions per row. With `backward`, a frozen base's
    backward pass is added: activation gradients only (2·N per token again) and attention twice its forward.

    Args:
      cfg: the thinker config (its text decoder's dimensions).
      rows, cached, new, head: as above.
      backward: add the backward pass.
    Returns:
      FLOPs (a float: the causal half-square is not an integer for odd lengths).
    """
    t = cfg.text
    head_params = t.vocab_size * t.hidden_size
    decoder_params = matmul_params(cfg) - head_params
    keys = new * cached + new * new / 2  # keys attended, summed over the new tokens
    attention = 4 * t.num_layers * t.num_heads * t.head_dim * keys
    matmuls = 2 * decoder_params * new + 2 * head_params * head
    return rows * ((2 if backward else 1) * matmuls + (3 if backward else 1) * attention)


def teacher_forced_flops(cfg, prompts: int, G: int, prompt_len: int, completion: int, *, backward: bool) -> float:
    """The reference pass (forward) or the update (`backward`): the prompts once, then the B·G completions."""
    prompt = model_flops(cfg, rows=prompts, cached=0, new=prompt_len, head=0, backward=backward)
    rows = model_flops(cfg, rows=prompts * G, cached=prompt_len, new=completion - 1, head=completion,
                       backward=backward)
    return prompt + rows


def grpo_bound(cfg, *, prompts: int, G: int, prompt_len: int, completion: int, bandwidth_bytes_s: float,
               flops_per_s: float) -> dict:
    """The bound's parts in seconds, and the FLOPs behind them.

    Args:
      cfg: the thinker config.
      prompts, G, prompt_len, completion: B prompts of S tokens, G samples of N tokens each.
      bandwidth_bytes_s: the card's measured copy bandwidth (bytes read + written per second).
      flops_per_s: the SFT step's model FLOP/s (its MFU x the card's peak).
    Returns:
      {"prefill_s", "decode_s", "rollout_s", "reference_s", "update_s", "step_s", "flops": {"prefill",
      "reference", "update"}}; step_s is the sum of rollout, reference and update (rewards are not bounded).
    """
    if min(prompts, G, prompt_len, completion) < 1 or bandwidth_bytes_s <= 0 or flops_per_s <= 0:
        raise ValueError(f"a GRPO bound needs positive shapes and rates, got B={prompts} G={G} S={prompt_len} "
                         f"N={completion} bandwidth={bandwidth_bytes_s} flops/s={flops_per_s}")
    flops = {"prefill": model_flops(cfg, rows=prompts, cached=0, new=prompt_len, head=1),
             "reference": teacher_forced_flops(cfg, prompts, G, prompt_len, completion, backward=False),
             "update": teacher_forced_flops(cfg, prompts, G, prompt_len, completion, backward=True)}
    decode_tokens = prompts * G * (completion - 1)
    decode_s = 0.0
    if decode_tokens:
        decode_s = decode_tokens / floor_tokens_per_s(cfg, prompts, prompt_len, completion, bandwidth_bytes_s / 1e9,
                                                      samples=G)
    out = {"prefill_s": flops["prefill"] / flops_per_s, "decode_s": decode_s,
           "reference_s": flops["reference"] / flops_per_s, "update_s": flops["update"] / flops_per_s}
    out["rollout_s"] = out["prefill_s"] + out["decode_s"]
    out["step_s"] = out["rollout_s"] + out["reference_s"] + out["update_s"]
    return {**out, "flops": flops}
