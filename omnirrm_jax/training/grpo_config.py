"""GRPO run configuration: the SFT sections (model, data, optim, mesh, run) plus a `grpo` section.

Defaults are the reference's ms-swift GRPO run (train/grpo_7b.sh and ms-swift/TRL defaults): G = 2, beta 0.04
(k3 estimator), clip epsilon 0.2, sequence-mean `grpo` loss, group-std advantage scaling, one policy update
per rollout batch, sampling at temperature 1.0 / top-p 0.95 / top-k 50, completions up to 1024 tokens,
rewards format/content/rubric weighted 0.4/0.4/0.2 in the reference's exact mode.
"""

from __future__ import annotations

import dataclasses
import math

from omnirrm_jax.rubric.rewards import MODES as REWARD_MODES
from omnirrm_jax.training.config import ConfigError, DataSpec, ModelSpec, RunSpec, pipeline_config
from omnirrm_jax.training.grpo_loss import ADVANTAGE_SCALES, KL_ESTIMATORS, LOSS_TYPES
from omnirrm_jax.training.optim import OptimConfig
from omnirrm_jax.parallel.sharding import MeshConfig

# fp32 logits alive at once in the teacher-forced pass (rows x sequence chunk); omnirrm plan counts them
LOGIT_TOKENS = 16384


@dataclasses.dataclass(frozen=True)
class GRPOSpec:
    num_generations: int = 2  # G: samples per prompt
    beta: float = 0.04  # KL weight; 0 skips the reference forward
    kl_estimator: str = "k3"  # k3 (TRL/ms-swift) | k1
    epsilon: float = 0.2  # lower clip bound (1 - eps)
    epsilon_high: float | None = None  # upper clip bound (1 + eps_high); default = epsilon
    loss_type: str = "grpo"  # grpo | dr_grpo | dapo
    scale_rewards: str = "group"  # group (divide by the group's std) | none
    num_iterations: int = 1  # policy updates per rollout batch (> 1 needs optim.grad_accum_steps = 1)
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    max_completion_length: int = 1024
    # the teacher-forced pass over this many rollout rows at a time (a multiple of G: whole prompts with their G
    # completions): the update runs each chunk's forward and backward and adds up the gradients (gradient
    # accumulation, one chunk's activations alive at a time); None = all rows at once (memory)
    # (Under data parallelism each chunk's gradient is all-reduced inside the loop: cheap for LoRA factors, k
    # times the traffic of one reduction for full fine-tuning. Chunks are strided over the prompts, so a chunk's
    # prompt count that is a multiple of the data x fsdp size gives every device its share of every chunk.)
    rows_per_chunk: int | None = None
    # rollouts: the G samples read one copy of the prompt's keys/values (on | off | auto = where the one-GPU
    # kernel runs; `decoding.sampler.SamplingConfig.shared_prefix`), through the kernel or einsums (pallas | xla |
    # auto = the kernel on one GPU at the shapes it was measured at; `SamplingConfig.shared_prefix_kernel`)
    shared_prefix: str = "auto"
    shared_prefix_kernel: str = "auto"
    # rollouts decode with each LoRA product added into its kernel once per rollout (one matmul per projection per
    # token; `SamplingConfig.fold_lora`: about 25 % faster decoding at the 3B, for one more copy of the targeted
    # kernels while the rollout runs); the old-policy log-prob and update passes run the branch, the reference pass
    # (LoRA runs) leaves it out
    fold_lora: bool = True
    # the first rollout's log-prob and update programs compile on a thread while it runs (`grpo.RolloutUpdate`);
    # on a cold compilation cache XLA's autotuner then times kernels beside the rollout's
    compile_ahead: bool = True
    constrained: bool = False  # sample rollouts through the judgement-schema automaton
    reward_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    reward_mode: str = "reference"

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError(f"grpo.num_generations must be >= 2 (a group needs a baseline), got {self.num_generations}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo.loss_type must be one of {tuple(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"grpo.kl_estimator must be one of {tuple(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.scale_rewards not in ADVANTAGE_SCALES:
            raise ValueError(f"grpo.scale_rewards must be one of {tuple(ADVANTAGE_SCALES)}, got {self.scale_rewards!r}")
        if self.num_iterations < 1 or self.max_completion_length < 1:
            raise ValueError("grpo.num_iterations and grpo.max_completion_length must be >= 1")
        if self.rows_per_chunk is not None and (self.rows_per_chunk < 1 or self.rows_per_chunk % self.num_generations):
            raise ValueError(f"grpo.rows_per_chunk must be a multiple of grpo.num_generations={self.num_generations} "
                             f"(whole prompts with their completions), got {self.rows_per_chunk}")
        if self.shared_prefix not in ("auto", "on", "off"):
            raise ValueError(f"grpo.shared_prefix must be auto, on or off, got {self.shared_prefix!r}")
        if self.shared_prefix_kernel not in ("auto", "pallas", "xla"):
            raise ValueError(f"grpo.shared_prefix_kernel must be auto, pallas or xla, "
                             f"got {self.shared_prefix_kernel!r}")
        # values the run would take without an error and then train or sample wrongly (or fail at the first rollout
        # under another name)
        weights_ok = len(self.reward_weights) == 3 and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in self.reward_weights)
        checks = {
            "beta": (0 <= self.beta < math.inf, ">= 0 (0 skips the KL term; a negative one rewards drifting away)"),
            "epsilon": (0 <= self.epsilon < 1, "in [0, 1) (the lower clip bound 1 - epsilon must stay above 0)"),
            "epsilon_high": (self.epsilon_high is None or self.epsilon_high >= 0, ">= 0, or null for grpo.epsilon"),
            "temperature": (0 < self.temperature < math.inf, "> 0 (the sampler divides the logits by it)"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1] (1 switches top-p off)"),
            "top_k": (self.top_k >= 0, ">= 0 (0 switches top-k off)"),
            "reward_mode": (self.reward_mode in REWARD_MODES, f"one of {', '.join(REWARD_MODES)}"),
            "reward_weights": (weights_ok, "3 finite numbers (format, content, rubric)"),
        }
        bad = [f"grpo.{key} must be {allowed}, got {getattr(self, key)!r}" for key, (ok, allowed) in checks.items()
               if not ok]
        if bad:
            raise ValueError("; ".join(bad))


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """`data.pipeline.batch_size` counts prompts per micro-step (each yields G completions);
    `data.pipeline.max_length` bounds the prompt, so a training row holds at most max_length +
    max_completion_length tokens."""

    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimConfig = OptimConfig(learning_rate=1e-5, warmup_ratio=0.05)
    mesh: MeshConfig = MeshConfig()
    run: RunSpec = RunSpec(workdir="runs/grpo", num_epochs=1.0)
    grpo: GRPOSpec = GRPOSpec()

    def __post_init__(self):
        if self.run.eval_every and not self.data.eval:
            raise ConfigError(f"run.eval_every={self.run.eval_every} needs data.eval shards (none given)")
        if self.data.pipeline.get("max_target_length") is not None:
            raise ConfigError("data.pipeline.max_target_length limits SFT judgements; GRPO bounds its completions with "
                              "grpo.max_completion_length")
        if self.data.pipeline.get("pack"):
            raise ConfigError("data.pipeline.pack is for SFT batches (several judgements per row); GRPO rows are "
                              "prompts that are decoded, never packed")
        g = self.grpo
        if g.num_iterations > 1 and self.optim.grad_accum_steps > 1:
            # iterating over grad_accum_steps collected rollouts would fix it; until then, refuse
            raise ConfigError(
                f"grpo.num_iterations={g.num_iterations} needs optim.grad_accum_steps=1, got "
                f"{self.optim.grad_accum_steps}: the iterations run back to back on one rollout while accumulation "
                f"applies an update only every grad_accum_steps micro-steps, so each iteration would see the same "
                f"weights (importance ratio 1, nothing clipped)")
        prompts = pipeline_config(self.data.pipeline, "grpo").batch_size
        rows = g.rows_per_chunk
        if rows and rows < prompts * g.num_generations and prompts % (rows // g.num_generations):
            # the update splits a rollout's prompts into equal chunks (grpo_objective._num_chunks)
            raise ConfigError(
                f"grpo.rows_per_chunk={rows} is {rows // g.num_generations} prompts a chunk, which must divide the "
                f"data.pipeline.batch_size={prompts} prompts of a rollout (or be >= {prompts * g.num_generations} "
                f"rows: all at once)")
