"""Run configuration: YAML files in `configs/` mapped onto frozen dataclasses, plus `a.b=value` overrides.

Only the CLI reads files; everything below it receives dataclasses. An unknown key is an error that names
the closest valid key, because a silently ignored typo (`learning_rte`) costs a whole run.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml

from omnirrm_jax.errors import UserError
from omnirrm_jax.models.config import DTYPES, PRESETS, REMAT_POLICIES
from omnirrm_jax.training.lora import LoraConfig
from omnirrm_jax.training.optim import OptimConfig
from omnirrm_jax.parallel.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where the thinker comes from: a preset (random init) or an HF directory; LoRA or full fine-tuning."""

    preset: str | None = "tiny"
    hf_path: str | None = None
    lora_path: str | None = None  # an adapter to start from (kept as LoRA branches)
    dtype: str = "bfloat16"  # compute
    param_dtype: str = "float32"
    attention_backend: str = "auto"
    remat: str | bool = "none"  # decoder-layer remat: none | full | dots (models.config); true = full
    # one scanned decoder layer instead of a loop over them: much shorter compiles (and cache loads on a resumed
    # run) for one stacked copy of the layer weights per step (models.config.ThinkerConfig.scan_layers)
    scan_layers: bool = False
    full_finetune: bool = False  # True: every parameter trains (the demo: a tiny model from scratch)
    lora: LoraConfig = LoraConfig()

    def __post_init__(self):
        remat = {True: "full", False: "none"}.get(self.remat, self.remat) if isinstance(self.remat, bool) \
            else self.remat
        if remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat: {self.remat!r} is not one of {', '.join(REMAT_POLICIES)} "
                              "(or true = full, false = none)")
        object.__setattr__(self, "remat", remat)
        if self.preset is None and not self.hf_path:
            raise ConfigError("model: set model.hf_path (an HF checkpoint folder) or model.preset "
                              f"(one of {', '.join(PRESETS)})")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"model.preset: {self.preset!r} is not one of {', '.join(PRESETS)}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ConfigError(f"model.{key}: {getattr(self, key)!r} is not one of {', '.join(DTYPES)}")
        if self.lora_path and not self.hf_path:
            raise ConfigError(f"model.lora_path={self.lora_path!r} needs model.hf_path: an adapter trains on the HF "
                              "base it was made for (a preset base is random)")
        if self.lora_path and self.full_finetune:
            raise ConfigError("model.lora_path and model.full_finetune exclude each other: full fine-tuning trains "
                              "the weights themselves (merge the adapter with `omnirrm convert` first)")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    train: tuple[str, ...] = ()  # ArrayRecord shard paths or globs
    eval: tuple[str, ...] = ()
    tokenizer: str | None = None  # HF checkpoint dir or a SentencePiece .model
    pipeline: dict = dataclasses.field(default_factory=dict)  # fields of data.pipeline.PipelineConfig

    def __post_init__(self):
        if self.pipeline:
            pipeline_config(self.pipeline)  # an unknown key or a bad value fails here, naming it


# data.pipeline keys a run may not set: the trainer sets them (a value there would be silently replaced)
TRAINER_SET = {"mode": "the trainer sets it", "num_epochs": "a run's length is run.num_epochs or run.max_steps"}


def pipeline_config(pipeline: dict, mode: str = "sft"):
    """`data.pipeline` as the `data.pipeline.PipelineConfig` of a `mode` run; an unknown key or a bad value is a
    ConfigError naming it."""
    from omnirrm_jax.data.pipeline import PipelineConfig

    names = [f.name for f in dataclasses.fields(PipelineConfig) if f.name not in TRAINER_SET]
    for key in pipeline:
        if key in TRAINER_SET:
            raise ConfigError(f"data.pipeline.{key} cannot be set: {TRAINER_SET[key]}")
        if key not in names:
            raise unknown_key(key, names, "data.pipeline")
    try:
        return PipelineConfig(**{**pipeline, "mode": mode})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.pipeline: {e}") from e


@dataclasses.dataclass(frozen=True)
class RunSpec:
    workdir: str = "runs/sft"
    seed: int = 0
    num_epochs: float = 2.0
    max_steps: int | None = None  # optimizer updates; overrides epochs when set
    log_every: int = 5
    save_every: int = 100
    keep_checkpoints: int = 4
    save_frozen: bool = False  # also store the frozen base: a self-contained checkpoint (LoRA runs: far larger)
    max_consecutive_nonfinite: int = 5
    eval_every: int = 0  # steps between held-out evals on data.eval (+ at the end; GRPO: rollouts); 0 = none
    eval_batches: int | None = None  # batches per evaluation; None = the whole eval set
    eval_max_new_tokens: int = 1024  # greedy judgement length cap for the pairwise accuracy
    # persistent XLA compilation cache (a resumed run reads its programs back): "auto" = ~/.cache/omnirrm/jax (or
    # $OMNIRRM_COMPILE_CACHE) on GPU / TPU, off on CPU; "none"; or a directory (`omnirrm_jax.compile_cache`)
    compile_cache: str = "auto"

    def __post_init__(self):
        """Values that used to train the wrong length or crash mid-run (ZeroDivisionError) are refused up front."""
        bad = [f"{name} must be {allowed}, got {getattr(self, name)!r}" for name, ok, allowed in (
            ("num_epochs", self.num_epochs > 0, "> 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "null (use num_epochs) or >= 1"),
            ("log_every", self.log_every >= 1, ">= 1"), ("save_every", self.save_every >= 1, ">= 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("max_consecutive_nonfinite", self.max_consecutive_nonfinite >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 0, ">= 0 (0: no held-out evaluation)"),
            ("eval_batches", self.eval_batches is None or self.eval_batches >= 1, "null (all) or >= 1"),
            ("eval_max_new_tokens", self.eval_max_new_tokens >= 1, ">= 1")) if not ok]
        if bad:
            raise ConfigError("run: " + "; ".join(bad))


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    run: RunSpec = RunSpec()

    def __post_init__(self):
        if self.data.pipeline.get("pack") and not self.run.max_steps:
            raise ConfigError("data.pipeline.pack needs run.max_steps: a packed batch holds a varying number of "
                              "examples, so run.num_epochs cannot be turned into a number of steps")
        if self.run.eval_every and not self.data.eval:
            raise ConfigError(f"run.eval_every={self.run.eval_every} needs data.eval shards (none given)")


class ConfigError(UserError):
    """A run config that cannot work: names the key (or file) and the valid values."""


def _coerce(hint, value: Any, where: str) -> Any:
    """Scalars by the field's type (YAML reads `1e-4` as a string); a wrong type is an error naming the key."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: null is not allowed")
    for t in options:
        if t is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is bool and isinstance(value, bool) or t is str and isinstance(value, str):
            return value
        if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if t is dict and isinstance(value, dict):
            return value
    raise ConfigError(f"{where}: {value!r} is not a valid {hint}")


def unknown_key(key: str, names: list[str], where: str) -> ConfigError:
    """The error for `where.key`, naming the closest valid key (a typo costs a whole run when ignored)."""
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return ConfigError(f"unknown config key {prefix}{key}{hint} (valid: {', '.join(names)})")


def _build(cls, raw: Any, where: str):
    if not dataclasses.is_dataclass(cls):
        return _coerce(cls, raw, where)
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise unknown_key(key, names, where)
        kwargs[key] = _build(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a spec's own range check: name where it sits in the config
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _set(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        if node.get(p) is None:  # absent, or a YAML section left empty (`model:` parses as None)
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def read_yaml(path: str) -> dict:
    """A run config file's mapping; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, got {type(raw).__name__}")
    return raw or {}


def load_config(path: str | None, overrides: list[str] = (), cls=SFTConfig):
    """Reads YAML (or nothing) and applies `key.sub=value` overrides (values parsed as YAML scalars)."""
    raw = read_yaml(path) if path else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), yaml.safe_load(value))
    return _build(cls, raw, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
