"""`omnirrm plan` arithmetic: parameter / gradient / optimizer bytes per device equal those of the real sharded
train state on 8 fake devices; the activation and KV-cache models equal their documented formulas."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax import cli
from omnirrm_jax.models import config as model_config
from omnirrm_jax.decoding.cache import init_cache
from omnirrm_jax.training import optim
from omnirrm_jax.training import plan as PL
from omnirrm_jax.training.config import ModelSpec, SFTConfig
from omnirrm_jax.training.lora import LoraConfig
from omnirrm_jax.parallel.sharding import MeshConfig, make_mesh
from omnirrm_jax.training.state import build_model, create_train_state


def _on_device0(tree) -> int:
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


@pytest.mark.parametrize("full_finetune", [False, True])
@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1),
                                  dict(data=1, fsdp=2, tensor=4)])
def test_sharded_sizes_equal_the_real_train_state(full_finetune, mesh):
    tcfg = model_config.tiny(param_dtype="float32", dtype="float32")
    cfg = SFTConfig(model=ModelSpec(full_finetune=full_finetune, lora=LoraConfig(rank=4, alpha=8.0)))
    row = PL.plan_row(cfg, tcfg, mesh, layout="t", hbm=80, platform="gpu")
    tx = optim.make_optimizer(cfg.optim, 10)
    state, _ = create_train_state(lambda: build_model(tcfg, hf_path=None, lora_cfg=None if full_finetune else
                                                      cfg.model.lora, lora_path=None, seed=0),
                                  tx, make_mesh(MeshConfig(**mesh)), full_finetune=full_finetune)
    assert row.params == _on_device0((state.trainable, state.frozen))
    assert row.grads == _on_device0(state.trainable)
    assert row.optimizer == _on_device0(state.opt_state)
    # sharding really splits something (otherwise the test would not check the rules)
    unsharded = PL.plan_row(cfg, tcfg, dict(data=8, fsdp=1, tensor=1), layout="t", hbm=80, platform="gpu")
    assert row.params < unsharded.params and unsharded.params == _nbytes_total(state.trainable, state.frozen)


def _nbytes_total(*trees) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(trees))


def test_activation_model_by_hand():
    """The docstring's formulas on a hand-sized config: D=64, N=4, K=2, H=16, F=128, L=2, V=512, bf16."""
    tcfg = model_config.tiny(dtype="bfloat16")
    t = tcfg.text
    assert (t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size, t.num_layers) == \
        (64, 4, 2, 16, 128, 2)
    V = t.vocab_size
    work = PL.Workload("sft", rows=8, seq=256)
    mesh = dict(data=2, fsdp=2, tensor=2)  # 2 rows per device, heads / MLP halved
    T = 2 * 256
    full_layer = 4 * 64 + 3 * 2 * 16 + 3 * 1 * 16 + 4 * 64  # 4D + 3NH/tp + 3KH/tp + 4F/tp
    loss = 2 * 2 * 256 * (V // 2) * 4
    emb = 2 * T * 64 * 2 + T * 64 * 4  # embeddings and final hidden (bf16), the fused head's gradient (fp32)
    got = lambda remat, **kw: PL.activation_bytes(tcfg, work, mesh, remat=remat, lora_rank=None, flash=True, **kw)  # noqa: E731
    assert got("none") == T * 2 * (2 * full_layer) + loss + emb
    assert got("full") == T * 2 * (2 * 64 + full_layer) + loss + emb
    assert got("dots") == T * 2 * (2 * (3 * 64 + 32 + 2 * 16 + 2 * 64) + full_layer) + loss + emb
    xla = PL.activation_bytes(tcfg, work, mesh, remat="none", lora_rank=8, flash=False)
    assert xla - got("none") == T * 2 * 2 * (7 * 8 + 2 * 2 * 256)  # LoRA r per target + attention probabilities
    # SFT with max_target_length 64: the head, its fp32 logits and its per-position gradient on 64 positions a row
    tail = PL.activation_bytes(tcfg, PL.Workload("sft", rows=8, seq=256, head_positions=64), mesh, remat="none",
                               lora_rank=None, flash=True)
    assert tail == T * 2 * (2 * full_layer) + 2 * 2 * 64 * (V // 2) * 4 + 2 * T * 64 * 2 + 2 * 64 * 64 * 4


def test_kv_cache_equals_the_decoder_cache():
    tcfg = model_config.tiny(dtype="bfloat16")
    work = PL.Workload("grpo", rows=6, seq=300, kv_rows=6, kv_seq=300)
    cache = jax.eval_shape(lambda: init_cache(tcfg, 6, 300))
    kv = sum(x.size * x.dtype.itemsize for x in cache.k + cache.v)
    assert PL.kv_cache_bytes(tcfg, work, dict(data=1, fsdp=1, tensor=1)) == kv
    assert PL.kv_cache_bytes(tcfg, work, dict(data=3, fsdp=1, tensor=2)) == kv // 3 // 2
    assert PL.kv_cache_bytes(tcfg, PL.Workload("sft", 6, 300), dict(data=1, fsdp=1, tensor=1)) == 0


def test_workloads_from_the_reference_configs():
    sft = PL.workload(PL.load_run_config("configs/sft_7b_lora.yaml"))
    assert (sft.mode, sft.rows, sft.seq, sft.kv_rows, sft.head_positions) == ("sft", 8, 3072, 0, 3072)
    tail = PL.workload(PL.load_run_config("configs/sft_7b_lora.yaml", ["data.pipeline.max_target_length=1024"]))
    assert tail.head_positions == 1024
    grpo_cfg = PL.load_run_config("configs/grpo_7b_lora.yaml")
    g = PL.workload(grpo_cfg)
    # the update runs the 4 prompts once each, followed by their 2 completions
    assert (g.mode, g.rows, g.seq, g.kv_rows, g.kv_seq) == ("grpo", 4, 6144 + 2 * 1024, 8, 6144 + 1024)
    chunked = PL.workload(PL.load_run_config("configs/grpo_7b_lora.yaml", ["grpo.rows_per_chunk=2"]))
    assert (chunked.rows, chunked.seq) == (1, 6144 + 2 * 1024)
    # fp32 logits alive in the teacher-forced pass: every completion row, a window of LOGIT_TOKENS // rows positions
    assert g.loss_tokens == 8 * 1024 and chunked.loss_tokens == 2 * 1024
    wide = PL.workload(PL.load_run_config("configs/grpo_7b_lora.yaml", ["grpo.num_generations=32"]))
    assert wide.loss_tokens == 128 * (16384 // 128)
    tcfg, note = PL.thinker_config(grpo_cfg)
    assert tcfg.text.num_layers == 28 and "guessed" in note and tcfg.remat == "full"


def test_mesh_parsing():
    assert PL.parse_mesh("fsdp=4,tensor=2", 8, MeshConfig()) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert PL.parse_mesh(None, 16, MeshConfig(data=-1, tensor=2)) == {"data": 8, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="needs 8 devices, 4 available"):
        PL.parse_mesh("fsdp=8", 4, MeshConfig())
    with pytest.raises(ValueError, match="'model=2' is not one of"):
        PL.parse_mesh("model=2", 2, MeshConfig())


def test_cli_on_a_tiny_config(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {preset: tiny, full_finetune: true}\n"
                    "data: {pipeline: {batch_size: 8, seq_buckets: [128, 256]}}\n")
    assert cli.main(["plan", str(path), "--devices", "8", "--mesh", "data=2,fsdp=4"]) == 0
    out = capsys.readouterr().out
    assert "step: sft, 8 rows x 256 tokens" in out and "8 x gpu" in out and "2/4/1" in out, out


@pytest.mark.slow
def test_cli_prints_the_standard_layouts(capsys):
    assert cli.main(["plan", "configs/grpo_7b_lora.yaml"]) == 0
    out = capsys.readouterr().out
    for name in ("1 x 80 GB GPU", "8 x 80 GB GPU", "TPU v5e-16", "kv cache", "1/16/1"):
        assert name in out, out
    # 7B thinker in bf16 on one device: ~8.9e9 parameters
    line = next(x for x in out.splitlines() if x.strip().startswith("1 x 80 GB GPU"))
    assert 16.0 < float(line.split()[7]) < 17.5, line
    assert cli.main(["plan", "configs/sft_3b_lora.yaml", "--devices", "4", "--mesh", "fsdp=4",
                     "--platform", "tpu-v5e"]) == 0
    assert "4 x tpu-v5e" in capsys.readouterr().out


def test_gathered_weights_under_fsdp():
    """FSDP holds whole gathered copies of the decoder weights: all layers' with remat none, one layer's with a
    rematerialising policy; nothing without FSDP."""
    cfg = SFTConfig(model=ModelSpec(lora=LoraConfig(rank=4, alpha=8.0)))

    def gathered(remat, mesh):
        tcfg = model_config.tiny(param_dtype="float32", dtype="float32", remat=remat)
        return PL.plan_row(cfg, tcfg, mesh, layout="t", hbm=80, platform="gpu").gathered

    t = model_config.tiny().text
    # the projection kernels (every tiny dim divides 8) at least, and no more than the layers hold in all
    kernels = t.num_layers * 4 * t.hidden_size * (2 * t.num_heads * t.head_dim + 2 * t.num_kv_heads * t.head_dim
                                                  + 3 * t.intermediate_size)
    trainable, frozen = PL._abstract_state(model_config.tiny(param_dtype="float32", dtype="float32"), cfg.model)
    layers = sum(v.size * 4 for st in (trainable, frozen) for p, v in nnx.to_flat_state(st) if p[:2] == ("model", "layers"))
    fsdp = dict(data=1, fsdp=8, tensor=1)
    assert gathered("none", dict(data=8, fsdp=1, tensor=1)) == 0
    # everything FSDP splits is gathered whole (what 8 does not divide was never split: left out)
    assert kernels <= gathered("none", fsdp) <= layers
    assert gathered("full", fsdp) == -(-gathered("none", fsdp) // t.num_layers)


def test_scanned_layers_add_one_stacked_copy_of_the_stored_layers():
    """`model.scan_layers` stacks the decoder layers' stored weights: the row counts exactly their stored bytes
    (a local shard's under FSDP), and nothing without the scan."""
    cfg = SFTConfig(model=ModelSpec(lora=LoraConfig(rank=4, alpha=8.0)))
    trainable, frozen = PL._abstract_state(model_config.tiny(param_dtype="float32", dtype="float32"), cfg.model)
    layers = sum(v.size * 4 for st in (trainable, frozen) for p, v in nnx.to_flat_state(st) if p[:2] == ("model", "layers"))

    def row(scan, mesh):
        tcfg = model_config.tiny(param_dtype="float32", dtype="float32", scan_layers=scan)
        return PL.plan_row(cfg, tcfg, mesh, layout="t", hbm=80, platform="gpu")

    dp, fsdp = dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=1)
    assert row(False, dp).stacked == 0
    assert row(True, dp).stacked == layers
    assert row(True, dp).total - row(False, dp).total == layers
    assert 0 < row(True, fsdp).stacked < layers  # the local shards only
    scanned_spec = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=True))
    assert PL.thinker_config(scanned_spec)[0].scan_layers  # `omnirrm plan` reads the option from the run config
