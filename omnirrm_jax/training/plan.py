"""`omnirrm plan`: per-device memory of a training run on a given mesh, before renting the machines.

Parameters, gradients and optimizer state are exact: the model is built abstractly (`nnx.eval_shape`, nothing is
allocated), each variable gets the sharding the trainer would give it (`parallel.sharding` rules on an
`AbstractMesh` of the requested shape) and its per-device shard shape is summed; the optimizer state is
`jax.eval_shape(tx.init)` of the trainable state, each leaf sharded like the parameter it mirrors.

Activations and the KV cache are a model (what the decoder keeps for the backward pass), per device:
  T = rows_dev * S tokens (rows_dev = rows / (data * fsdp), S = the longest sequence bucket; for GRPO rows are
  the prompts of one update chunk and S = prompt bucket + G * max_completion_length, since each prompt runs
  once and its G completions attend to its cache); b = bytes of the compute dtype; head and MLP widths divided by tensor.
  Per decoder layer and token, in elements:
    none  4D + 3(N+K)H/tp + 4F/tp (+ 2*N/tp*S attention probabilities with XLA attention; the cuDNN / splash
          kernels keep only a log-sum-exp) (+ r per LoRA target)
    dots  3D + (N+2K)H/tp + 2F/tp   (the projection outputs and the layer input)
    full  D (the layer input) + one layer's `none` activations while it is recomputed
  plus the loss: one chunk of at most 1024 positions per row of float32 logits and their gradient (vocab / tp;
  SFT with `max_target_length`: at most that many; GRPO: the teacher-forced pass's window of
  `grpo_config.LOGIT_TOKENS` completion positions), two (T, D) buffers (embeddings, final hidden) and one fp32
  D-vector per position under the output head (the fused head's per-position gradient,
  `models.head.linear_token_logprobs`: S per row, or SFT's `max_target_length`). The vision / audio towers are not
  counted: their tokens are part of T, and with the ViT frozen their activations are not kept.
  GRPO rollouts add the KV cache:
    rows_dev(batch * G) * (prompt + completion) * layers * 2 (K, V) * K/tp * H * b.
Under FSDP every layer computes with whole weights gathered from the stored shards (`layers.weight`); with remat
`none` XLA keeps all decoder layers' gathered copies from the forward to the backward pass ("gathered": whole
new buffers, the stored shards stay beside them; measured on two H100s within 2.5 %, docs/PERFORMANCE.md); with
`full` or `dots` the model assumes one layer's at a time (the layer's recomputation gathers again; not measured).
With `model.scan_layers` the decoder layers' stored weights are stacked for the scan ("stacked": one copy of
their stored shards, held from the forward scan to the backward one; not measured on a GPU), and a prefill writing
the rollout's KV cache holds a stacked copy of it beside the per-layer buffers (the "kv cache" column doubles).
Peak = params + optimizer + gathered + stacked + max(gradients + activations, KV cache): the cache is dropped
before the update.
Compiler temporaries and fragmentation are not modelled; leave ~10-15% headroom.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from omnirrm_jax.errors import UserError
from omnirrm_jax.models import abstract
from omnirrm_jax.models import config as model_config
from omnirrm_jax.models import params as P
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.parallel.sharding import MESH_AXES, MeshConfig
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.training import lora as lora_lib
from omnirrm_jax.training import optim
from omnirrm_jax.training.state import trainable_filter

GiB = 1024 ** 3
HBM_GIB = {"gpu": 80.0, "h100": 80.0, "h200": 141.0, "tpu-v5e": 16.0, "tpu-v5p": 95.0, "tpu-v4": 32.0}
# The three layouts printed when no --devices is given: (name, devices, platform).
STANDARD_LAYOUTS = (("1 x 80 GB GPU", 1, "gpu"), ("8 x 80 GB GPU", 8, "gpu"), ("TPU v5e-16", 16, "tpu-v5e"))
LORA_TARGETS_PER_LAYER = 7  # q, k, v, o, gate, up, down
LOSS_CHUNK = 1024  # models.head.token_logprobs' default


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one micro-step processes (global), read from the run config."""

    mode: str  # sft | grpo
    rows: int  # sequences in the training step
    seq: int  # their length
    kv_rows: int = 0  # GRPO rollout sequences held in the KV cache
    kv_seq: int = 0
    loss_tokens: int = 0  # positions whose fp32 logits are alive at once (0: rows x one LOSS_CHUNK)
    head_positions: int = 0  # positions of a row the output head runs on (SFT's max_target_length; 0: all)


@dataclasses.dataclass(frozen=True)
class Row:
    layout: str
    mesh: dict
    params: int
    grads: int
    optimizer: int
    act_none: int
    act_remat: int
    kv_cache: int
    gathered: int  # FSDP: decoder weights gathered for compute and held beside the stored shards
    remat: str
    hbm: float  # GiB per device
    rows_dev: float  # training rows per device (not a whole number: the batch does not split evenly)
    stacked: int = 0  # `model.scan_layers`: the decoder-layer weights stacked for the scan, held through the step

    @property
    def total(self) -> int:
        """Peak: parameters, optimizer state and (FSDP) the gathered weights live throughout the step; the step's
        gradients and activations and the rollout's KV cache are not alive at the same time (the cache is dropped
        before the update)."""
        act = self.act_none if self.remat == "none" else self.act_remat
        return self.params + self.optimizer + self.gathered + self.stacked + max(self.grads + act, self.kv_cache)


# ------------------------------------------------------------------------------------------------ inputs

def load_run_config(path: str, overrides=()):
    """SFTConfig or GRPOConfig (a `grpo:` section decides)."""
    raw = config_lib.read_yaml(path)
    if "grpo" in raw:
        from omnirrm_jax.training.grpo_config import GRPOConfig

        return config_lib.load_config(path, overrides, cls=GRPOConfig)
    return config_lib.load_config(path, overrides)


def thinker_config(cfg, preset: str | None = None):
    """The model config without loading weights: `model.hf_path`'s config.json when present, else `preset`
    (or the config's), else a preset guessed from the path's name (a 7B or 3B directory). Returns (cfg, note)."""
    spec = cfg.model
    remat = spec.remat if isinstance(spec.remat, str) else ("full" if spec.remat else "none")
    runtime = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, remat=remat, scan_layers=spec.scan_layers)
    if preset is None and spec.hf_path and os.path.exists(os.path.join(spec.hf_path, "config.json")):
        return P.read_config(spec.hf_path, **runtime), f"config of {spec.hf_path}"
    name = preset or spec.preset
    note = f"preset {name}"
    if name is None and spec.hf_path:
        base = os.path.basename(os.path.normpath(spec.hf_path)).lower()
        name = "omni_7b" if "7b" in base else "omni_3b" if "3b" in base else None
        note = f"{spec.hf_path} not found here; preset {name} guessed from its name (--preset to choose)"
    if name not in model_config.PRESETS:
        raise UserError(f"no model config: model.hf_path {spec.hf_path!r} is not readable here and no preset "
                         f"is given; pass --preset one of {sorted(model_config.PRESETS)}")
    return model_config.PRESETS[name](**runtime), note


def workload(cfg) -> Workload:
    pcfg = config_lib.pipeline_config(cfg.data.pipeline)
    seq = pcfg.length_limit if pcfg.max_length and not pcfg.pack else max(pcfg.seq_buckets)  # packed: full rows
    seq = min(b for b in pcfg.seq_buckets if b >= seq)
    grpo = getattr(cfg, "grpo", None)
    if grpo is None:  # packed rows put targets mid-row: the head runs on every position
        head = seq if pcfg.pack else min(pcfg.max_target_length or seq, seq)
        return Workload("sft", pcfg.batch_size, seq, head_positions=head)
    G = grpo.num_generations
    rows = pcfg.batch_size * G
    total = seq + grpo.max_completion_length
    # the update's teacher-forced pass: each prompt once, then its G completions over the prompt's cache;
    # a chunk of `rows_per_chunk // G` prompts is alive at once (grpo_objective.completion_logprobs)
    prompts = max(1, grpo.rows_per_chunk // G) if grpo.rows_per_chunk else pcfg.batch_size
    from omnirrm_jax.training.grpo_config import LOGIT_TOKENS

    r, N = prompts * G, grpo.max_completion_length
    return Workload("grpo", prompts, seq + G * N, kv_rows=rows, kv_seq=total,
                    loss_tokens=r * max(1, min(N, LOGIT_TOKENS // r)))


def parse_mesh(text: str | None, devices: int, default) -> dict:
    """'data=2,fsdp=4' (missing axes 1, one may be -1) -> {'data': .., 'fsdp': .., 'tensor': ..} for `devices`."""
    if text:
        vals = {}
        for part in text.split(","):
            k, _, v = part.partition("=")
            if k.strip() not in MESH_AXES or not v.strip().lstrip("-").isdigit():
                raise UserError(f"--mesh {text!r}: {part!r} is not one of {'/'.join(MESH_AXES)}=INT")
            vals[k.strip()] = int(v)
        default = MeshConfig(**{a: vals.get(a, 1) for a in MESH_AXES})
    return dict(zip(MESH_AXES, default.shape(devices)))


# ------------------------------------------------------------------------------------------------ arithmetic

def abstract_mesh(mesh: dict) -> AbstractMesh:
    return AbstractMesh(tuple(mesh.values()), tuple(mesh), axis_types=(AxisType.Auto,) * len(mesh))


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def sharded_state_bytes(state, mesh: AbstractMesh, rules=None) -> tuple[int, dict]:
    """(bytes per device, {path: shard shape}) of an abstract NNX state under the trainer's sharding rules (or
    `rules`)."""
    shardings = S.state_shardings(state, mesh, rules or S.DEFAULT_RULES)
    total, shapes = 0, {}
    for (path, var), (_, sh) in zip(nnx.to_flat_state(state), nnx.to_flat_state(shardings)):
        sh = sh.get_value() if isinstance(sh, nnx.Variable) else sh
        shard = sh.shard_shape(var.shape)
        shapes[path] = shard
        total += _nbytes(shard, var.dtype)
    return total, shapes


def optimizer_bytes(tx, abstract_trainable, mesh: AbstractMesh) -> int:
    """Per-device bytes of `tx.init(trainable)`, sharded as the trainer shards it (`optimizer_shardings`)."""
    opt = jax.eval_shape(tx.init, abstract_trainable)
    shardings = S.optimizer_shardings(opt, S.state_shardings(abstract_trainable, mesh), mesh)
    return sum(_nbytes(sh.shard_shape(leaf.shape), leaf.dtype)
               for leaf, sh in zip(jax.tree.leaves(opt), jax.tree.leaves(shardings)))


def activation_bytes(tcfg, work: Workload, mesh: dict, *, remat: str, lora_rank: int | None,
                     flash: bool) -> int:
    """The activation model of the module docstring (bytes per device)."""
    t = tcfg.text
    dp, tp = mesh["data"] * mesh["fsdp"], mesh["tensor"]
    split = lambda n: n // tp if n % tp == 0 else n  # noqa: E731 - the sharding rules replicate what tp does not divide
    rows = -(-work.rows // dp)
    T, S, D, H = rows * work.seq, work.seq, t.hidden_size, t.head_dim
    qh, kh, f = split(t.num_heads) * H, split(t.num_kv_heads) * H, split(t.intermediate_size)
    b = np.dtype(tcfg.dtype).itemsize
    full_layer = 4 * D + 3 * qh + 3 * kh + 4 * f + (LORA_TARGETS_PER_LAYER * lora_rank if lora_rank else 0)
    if not flash:
        full_layer += 2 * split(t.num_heads) * S
    per_layer = {"none": full_layer, "dots": 3 * D + qh + 2 * kh + 2 * f, "full": D}[remat]
    layers = t.num_layers * per_layer + (full_layer if remat != "none" else 0)
    head = rows * (work.head_positions or S)  # positions under the output head
    loss_tokens = -(-work.loss_tokens // dp) if work.loss_tokens else rows * min(LOSS_CHUNK, work.head_positions or S)
    loss = 2 * loss_tokens * split(t.vocab_size) * 4
    return T * b * layers + loss + 2 * T * D * b + head * D * 4


def _layers_only(state):
    return nnx.filter_state(state, lambda path, _: tuple(path[:2]) == ("model", "layers"))


def gathered_weight_bytes(states, mesh: AbstractMesh, *, remat: str, num_layers: int, dtype) -> int:
    """Per-device bytes of decoder-layer weights gathered for compute (whole, in their compute layout and `dtype`:
    `layers.weight` casts before it gathers) that are held at once: every layer's with remat `none`, one layer's
    otherwise (module docstring). The output head's gathered table is not counted."""
    extra = 0
    for state in states:
        state = _layers_only(state)
        _, stored = sharded_state_bytes(state, mesh)
        _, compute = sharded_state_bytes(state, mesh, S.weight_compute_rules())
        # an all-gather writes a whole new buffer; the stored shard stays alive beside it
        extra += sum(_nbytes(shape, dtype) for path, shape in compute.items() if shape != stored[path])
    return extra if remat == "none" else -(-extra // num_layers)


def stacked_layer_bytes(states, mesh: AbstractMesh) -> int:
    """Per-device bytes of the decoder-layer weights as `scan_layers` stacks them: a copy of the stored shards (in
    their stored dtype), alive from the forward scan to the backward one."""
    return sum(sharded_state_bytes(_layers_only(state), mesh)[0] for state in states)


def kv_cache_bytes(tcfg, work: Workload, mesh: dict) -> int:
    """The rollout's cache with the prompt repeated per sample (on one GPU the shared-prefix layout holds each
    prompt once, `decoding.shared_prefix`: less than this, so the plan stays on the cautious side)."""
    if not work.kv_rows:
        return 0
    t = tcfg.text
    rows = -(-work.kv_rows // (mesh["data"] * mesh["fsdp"]))
    k = t.num_kv_heads // mesh["tensor"] if t.num_kv_heads % mesh["tensor"] == 0 else t.num_kv_heads
    return rows * work.kv_seq * t.num_layers * 2 * k * t.head_dim * np.dtype(tcfg.dtype).itemsize


@functools.lru_cache(maxsize=4)
def _abstract_state(tcfg, spec) -> tuple:
    """(trainable, frozen) abstract states; cached, as building a 7B graph takes a while and every layout needs it."""
    def build():
        model = Thinker(tcfg, rngs=nnx.Rngs(0))
        if not spec.full_finetune:
            lora_lib.apply_lora(model, spec.lora, nnx.Rngs(1))
        return model

    _, trainable, frozen = nnx.split(abstract.eval_shape(build), trainable_filter(spec.full_finetune), ...)
    return trainable, frozen


def plan_row(cfg, tcfg, mesh: dict, *, layout: str, hbm: float, platform: str) -> Row:
    """One layout's per-device memory (see the module docstring)."""
    spec = cfg.model
    trainable, frozen = _abstract_state(tcfg, spec)
    amesh = abstract_mesh(mesh)
    train_b, _ = sharded_state_bytes(trainable, amesh)
    frozen_b, _ = sharded_state_bytes(frozen, amesh)
    grpo = getattr(cfg, "grpo", None)
    tx = optim.make_optimizer(cfg.optim, 1000, token_mean=grpo is None)  # as `run.setup` builds it
    opt_b = optimizer_bytes(tx, trainable, amesh)
    work = workload(cfg)
    params = train_b + frozen_b
    if grpo is not None and spec.full_finetune and grpo.beta != 0:
        params += train_b  # the frozen initial policy kept for the KL term
    flash = platform != "cpu" and tcfg.attention_backend != "xla"
    lora_rank = None if spec.full_finetune else spec.lora.rank
    remat = tcfg.remat
    act_none = activation_bytes(tcfg, work, mesh, remat="none", lora_rank=lora_rank, flash=flash)
    act_remat = activation_bytes(tcfg, work, mesh, remat="full" if remat == "none" else remat, lora_rank=lora_rank,
                                 flash=flash)
    gathered = gathered_weight_bytes((trainable, frozen), amesh, remat=remat, num_layers=tcfg.text.num_layers,
                                     dtype=tcfg.dtype)
    stacked = stacked_layer_bytes((trainable, frozen), amesh) if tcfg.scan_layers else 0
    kv_cache = kv_cache_bytes(tcfg, work, mesh) * (2 if tcfg.scan_layers else 1)  # the scan stacks a copy of it
    return Row(layout, mesh, params, train_b, opt_b, act_none, act_remat, kv_cache, gathered, remat, hbm,
               work.rows / (mesh["data"] * mesh["fsdp"]), stacked)


# ------------------------------------------------------------------------------------------------ output

def format_table(rows: list[Row], remat_name: str) -> str:
    head = ["layout", "mesh d/f/t", "rows/dev", "params", "grads", "optimizer", "act", f"act {remat_name}", "kv cache",
            "gathered", "stacked", "total", "HBM", "fits"]
    lines = [head]
    for r in rows:
        g = lambda x: f"{x / GiB:.2f}"  # noqa: E731
        fits = "yes" if r.total <= 0.9 * r.hbm * GiB else "no"
        lines.append([r.layout, f"{r.mesh['data']}/{r.mesh['fsdp']}/{r.mesh['tensor']}", f"{r.rows_dev:g}",
                      g(r.params), g(r.grads), g(r.optimizer), g(r.act_none), g(r.act_remat), g(r.kv_cache),
                      g(r.gathered), g(r.stacked), g(r.total), f"{r.hbm:.0f}",
                      fits if r.rows_dev == int(r.rows_dev) else "batch!"])
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines)


def report(config: str, overrides=(), *, devices: int | None = None, mesh: str | None = None,
           platform: str = "gpu", preset: str | None = None) -> str:
    """`omnirrm plan`'s output: the run, the step's shape and a per-device memory table, on `devices` x `platform`
    (default: the standard layouts) with `mesh` ("data=..,fsdp=..,tensor=.."; default: the config's)."""
    cfg = load_run_config(config, overrides)
    tcfg, note = thinker_config(cfg, preset)
    work = workload(cfg)
    layouts = [(f"{devices} x {platform}", devices, platform)] if devices else STANDARD_LAYOUTS
    rows = []
    for name, n, plat in layouts:
        meshes = [parse_mesh(mesh, n, cfg.mesh)]
        if not mesh and n > 1 and meshes[0]["fsdp"] != n:
            meshes.append({"data": 1, "fsdp": n, "tensor": 1})  # the all-FSDP alternative
        for m in meshes:
            rows.append(plan_row(cfg, tcfg, m, layout=name, hbm=HBM_GIB[plat], platform=plat))
    remat = tcfg.remat if tcfg.remat != "none" else "full"
    return "\n".join([
        f"model: {note}; {cfg.model.param_dtype} params, {cfg.model.dtype} compute, "
        f"{'full fine-tuning' if cfg.model.full_finetune else f'LoRA r={cfg.model.lora.rank}'}",
        f"step: {work.mode}, {work.rows} rows x {work.seq} tokens"
        + (f"; rollout KV cache {work.kv_rows} rows x {work.kv_seq} tokens" if work.kv_rows else ""),
        f"per-device GiB; total = params + optimizer + gathered + stacked + max(grads + act, kv cache) with "
        f"remat={tcfg.remat}; "
        "'fits' leaves 10% of HBM for XLA temporaries; 'batch!': the batch does not split over data x fsdp",
        format_table(rows, remat)])
