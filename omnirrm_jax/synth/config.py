"""`omnirrm synth CONFIG`: the YAML file -> frozen dataclasses, every unknown key or bad value a one-line
`UserError` naming it. Secrets never live here: a teacher's key is read from the environment variable the config
names (`api_key_env`), or from `api_key` in the file, and is never logged or written to the report."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from omnirrm_jax.errors import UserError

SOURCE_KINDS = ("image", "video", "audio", "jsonl")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str                     # image: RLAIF-V-style JSON; video: JSON list; audio: Clotho-AQA CSV; jsonl
    path: str
    cap: int | None = None        # at most this many prompts kept from this source (after dedupe)
    name: str = ""                # how the report names it (default: the file name)


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """One answer writer: a thinker checkpoint (HF dir, Orbax dir or a training workdir) at one setting."""

    label: str
    checkpoint: str = ""
    lora: str | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    temperature: float = 0.0


@dataclasses.dataclass(frozen=True)
class CandidateSpec:
    strong: PolicySpec = PolicySpec("strong")
    weak: PolicySpec = PolicySpec("weak")
    batch_size: int = 4
    max_new_tokens: dict = dataclasses.field(default_factory=dict)   # modality -> cap, over the reference's
    max_length: int = 8192
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    name: str
    base_url: str = ""
    model: str = ""
    base_url_env: str = ""
    model_env: str = ""
    api_key_env: str = ""
    api_key: str = dataclasses.field(default="", repr=False)
    temperature: float = 0.2      # the reference's annotation calls
    max_tokens: int = 2048
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0

    def resolved(self) -> "TeacherSpec":
        """base_url, model and key filled from the environment where the config names variables."""
        def env(var: str, what: str) -> str:
            if var and not os.environ.get(var):
                raise UserError(f"teachers.{self.name}.{what}: environment variable {var} is not set")
            return os.environ.get(var, "") if var else ""
        out = dataclasses.replace(self, base_url=env(self.base_url_env, "base_url_env") or self.base_url,
                                  model=env(self.model_env, "model_env") or self.model,
                                  api_key=env(self.api_key_env, "api_key_env") or self.api_key)
        for what in ("base_url", "model"):
            if not getattr(out, what):
                raise UserError(f"teachers.{self.name}: set {what} or {what}_env")
        return out


@dataclasses.dataclass(frozen=True)
class TeacherRun:
    concurrency: int = 8          # requests in flight, all teachers together
    timeout_s: float = 120.0
    max_retries: int = 4          # per request, on 429 / 5xx / timeouts / connection errors
    backoff_s: float = 1.0        # first wait; doubles each retry (a Retry-After header wins, up to max_backoff_s)
    max_backoff_s: float = 30.0
    max_requests: int | None = None   # per-run budget: HTTP attempts
    max_tokens: int | None = None     # per-run budget: prompt + completion tokens the teachers reported
    max_failures_in_a_row: int = 32   # a teacher failing this many requests in a row is not asked again this run
    video_fps: float = 1.0
    video_max_frames: int = 35
    frame_size: int = 512


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    out_dir: str
    media_root: str
    sources: tuple[SourceSpec, ...]
    teachers: tuple[TeacherSpec, ...]
    candidates: CandidateSpec = CandidateSpec()
    teacher_run: TeacherRun = TeacherRun()
    seed: int = 0                 # A/B order of the pairs
    sft_teacher: str = ""         # whose judgement becomes the SFT target (default: the first teacher)
    rejected_sample: int = 20


def _build(cls, raw: Any, where: str, **fixed):
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields) - set(fixed))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known: {sorted(set(fields) - set(fixed))}")
    try:
        return cls(**{**raw, **fixed})
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


_RUN_LIMITS = {  # field: (type, lowest allowed, None allowed)
    "concurrency": (int, 1, False), "timeout_s": (float, 1e-3, False), "max_retries": (int, 0, False),
    "backoff_s": (float, 0.0, False), "max_backoff_s": (float, 0.0, False), "max_requests": (int, 0, True),
    "max_tokens": (int, 0, True), "max_failures_in_a_row": (int, 1, False), "video_fps": (float, 1e-3, False),
    "video_max_frames": (int, 1, False),
    "frame_size": (int, 28, False)}


def _check_run(run: TeacherRun) -> TeacherRun:
    """teacher_run values of the right type and range (a 0 concurrency would wait forever, a quoted "30" would
    fail deep in the client)."""
    for name, (kind, low, nullable) in _RUN_LIMITS.items():
        v = getattr(run, name)
        if v is None and nullable:
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
        if not ok or v < low:
            want = "a whole number" if kind is int else "a number"
            raise UserError(f"teacher_run.{name}: expected {want} >= {low}{' or null' if nullable else ''}, "
                            f"got {v!r}")
    return run


def from_dict(raw: Any, base_dir: str = ".") -> SynthConfig:
    """A parsed YAML mapping -> SynthConfig; relative paths are taken from `base_dir` (the config's folder)."""
    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping at the top")
    raw = dict(raw)

    def path(p: Any, where: str) -> str:
        if not isinstance(p, str) or not p:
            raise UserError(f"{where}: expected a path")
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

    for key in ("out_dir", "media_root", "sources", "teachers"):
        if key not in raw:
            raise UserError(f"config: '{key}' is missing")
    sources = []
    for i, s in enumerate(raw.pop("sources") or []):
        spec = _build(SourceSpec, s, f"sources[{i}]")
        if spec.kind not in SOURCE_KINDS:
            raise UserError(f"sources[{i}].kind: {spec.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if spec.cap is not None and (not isinstance(spec.cap, int) or spec.cap < 0):
            raise UserError(f"sources[{i}].cap: expected a non-negative integer, got {spec.cap!r}")
        sources.append(dataclasses.replace(spec, path=path(spec.path, f"sources[{i}].path"),
                                           name=spec.name or os.path.basename(spec.path)))
    if not sources:
        raise UserError("sources: give at least one source")
    teachers_raw = raw.pop("teachers")
    if not isinstance(teachers_raw, list) or len(teachers_raw) != 2:
        raise UserError("teachers: give exactly two teachers (a list of two mappings)")
    teachers = tuple(_build(TeacherSpec, t, f"teachers[{i}]") for i, t in enumerate(teachers_raw))
    if teachers[0].name == teachers[1].name:
        raise UserError(f"teachers: both are named {teachers[0].name!r}; give them different names")
    cand = dict(raw.pop("candidates", None) or {})
    teacher_run = _check_run(_build(TeacherRun, raw.pop("teacher_run", None) or {}, "teacher_run"))
    for role in ("strong", "weak"):
        p = _build(PolicySpec, cand.get(role) or {}, f"candidates.{role}", label=(cand.get(role) or {}).get(
            "label", role))
        cand[role] = dataclasses.replace(p, checkpoint=path(p.checkpoint, f"candidates.{role}.checkpoint")
                                         if p.checkpoint else "")
    cfg = _build(SynthConfig, raw, "config", sources=tuple(sources), teachers=teachers,
                 candidates=_build(CandidateSpec, cand, "candidates"),
                 teacher_run=teacher_run)
    cfg = dataclasses.replace(cfg, out_dir=path(cfg.out_dir, "out_dir"), media_root=path(cfg.media_root,
                                                                                         "media_root"))
    if cfg.candidates.strong.label == cfg.candidates.weak.label:
        raise UserError("candidates: strong and weak need different labels")
    if cfg.sft_teacher and cfg.sft_teacher not in {t.name for t in teachers}:
        raise UserError(f"sft_teacher: {cfg.sft_teacher!r} is not a teacher name")
    return cfg


def load(path: str) -> SynthConfig:
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise UserError(f"config {path} is not valid YAML: {e}") from None
    return from_dict(raw, os.path.dirname(os.path.abspath(path)))
