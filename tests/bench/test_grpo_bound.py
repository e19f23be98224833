"""The GRPO step's lower bound (`bench.grpo_bound`) on the tiny config, against FLOPs and bytes counted by hand."""
import pytest

from omnirrm_jax.bench.grpo_bound import grpo_bound, model_flops
from omnirrm_jax.models import config as C
from omnirrm_jax.training.metrics import flops_per_token

# bf16 as the benches run; vocab 512, width 64, MLP 128, 2 layers, 4 query / 2 kv heads of 16
CFG = C.tiny(dtype="bfloat16", param_dtype="bfloat16")
DECODER = 2 * (64 * (4 + 2 * 2) * 16 + 4 * 16 * 64 + 3 * 64 * 128)  # q,k,v + o + gate/up/down, 2 layers
HEAD = 512 * 64
ATTN = 4 * 2 * 4 * 16  # QKᵀ and PV per key attended, all layers: 2 FLOPs x 2 matmuls x 2 layers x 64


def test_training_step_flops_are_the_mfu_definition():
    """A row from scratch with backward is what bench sft's MFU counts, so both sides of the ratio agree."""
    for seq, window in ((20, 4), (20, None), (7, 3)):
        got = model_flops(CFG, rows=1, cached=0, new=seq, head=window or seq, backward=True)
        assert got == pytest.approx(flops_per_token(CFG, seq, loss_window=window) * seq, rel=1e-12)


def test_tiny_bound_flops_by_hand():
    b = grpo_bound(CFG, prompts=2, G=3, prompt_len=8, completion=5, bandwidth_bytes_s=1e9, flops_per_s=1e6)
    # the prompts once: 8 tokens, 8 * 8 / 2 keys; then 6 rows of 4 completion tokens after 8 cached keys
    # (4 * 8 + 4 * 4 / 2 keys) with the head on 5 positions
    prompt = 2 * (2 * DECODER * 8 + ATTN * 32)
    rows = 6 * (2 * DECODER * 4 + 2 * HEAD * 5 + ATTN * 40)
    assert b["flops"]["reference"] == prompt + rows == 8_019_968
    # frozen-base backward: matmuls twice (activation gradients only), attention three times
    update = 2 * (2 * 2 * DECODER * 8 + 3 * ATTN * 32) + 6 * (2 * (2 * DECODER * 4 + 2 * HEAD * 5) + 3 * ATTN * 40)
    assert b["flops"]["update"] == update == 16_195_584
    assert b["flops"]["prefill"] == 2 * (2 * DECODER * 8 + 2 * HEAD + ATTN * 32)  # head on the last position
    assert b["reference_s"] == pytest.approx(prompt / 1e6 + rows / 1e6)
    assert b["update_s"] == pytest.approx(update / 1e6)
    # decode: 4 steps (token 0 comes from the prefill), each reading the bf16 weights (+ embedding table) and
    # the mean KV cache: 2 x 8 prompt tokens once + 6 rows x 5 / 2, at 256 bytes a token (k, v; 2 layers, 2 x 16)
    step_bytes = 2 * (DECODER + HEAD) + 256 * (2 * 8 + 6 * 5 / 2)
    assert b["decode_s"] == pytest.approx(4 * step_bytes / 1e9, rel=1e-12)
    assert b["rollout_s"] == pytest.approx(b["prefill_s"] + b["decode_s"])
    assert b["step_s"] == pytest.approx(b["rollout_s"] + b["reference_s"] + b["update_s"])


def test_bound_scales_with_its_inputs():
    kw = dict(prompts=2, G=4, prompt_len=16, bandwidth_bytes_s=1e9, flops_per_s=1e9)
    short, long = (grpo_bound(CFG, completion=n, **kw) for n in (64, 128))
    # twice the steps (127 / 63), each reading a larger mean cache: 2 x 16 prompt tokens + 8 rows x N / 2
    weights, kv = 2 * (DECODER + HEAD), lambda n: 256 * (2 * 16 + 8 * n / 2)
    ratio = long["decode_s"] / short["decode_s"]
    assert ratio == pytest.approx(127 * (weights + kv(128)) / (63 * (weights + kv(64)))) and 2 < ratio < 2.6
    assert long["prefill_s"] == short["prefill_s"]  # the prompts do not change
    slow = grpo_bound(CFG, completion=64, **{**kw, "flops_per_s": 5e8, "bandwidth_bytes_s": 5e8})
    for k in ("prefill_s", "decode_s", "reference_s", "update_s"):
        assert slow[k] == pytest.approx(2 * short[k])
    one = grpo_bound(CFG, completion=1, **kw)
    assert one["decode_s"] == 0 and one["reference_s"] > 0  # one token: no decode step, still one head position
    with pytest.raises(ValueError, match="positive"):
        grpo_bound(CFG, completion=8, **{**kw, "flops_per_s": 0})
