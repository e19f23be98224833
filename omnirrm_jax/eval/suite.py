"""`omnirrm eval suite CONFIG`: every benchmark a config names, one model load, one report.

Config (YAML; relative paths are taken from the config file's folder; see configs/eval_paper.yaml):

  name: Omni-RRM-7B (ours)          # the report's row label
  model: {checkpoint: DIR, lora: DIR|null, tokenizer: PATH|null, dtype: bfloat16}
  output_dir: runs/eval_paper       # <bench>.judgements.jsonl, <bench>.json, report.md/.json/.png
  run: {orders: both, seed: 0, batch_size: 8, max_new_tokens: null, max_length: 16384, max_error_ratio: 0.5}
  benchmarks:
    vl_rewardbench: {data: FILE, media_root: DIR, limit: null}
    ...                             # any of the six; each resumes from its judgements file
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata as md
import json
import os
from typing import Any

import yaml

from omnirrm_jax.errors import UserError
from omnirrm_jax.eval import benchmarks as B
from omnirrm_jax.eval import report
from omnirrm_jax.eval.judge_runner import Judge, load_judge
from omnirrm_jax.eval.readers import read_benchmark
from omnirrm_jax.eval.runner import BenchmarkRun, RunOptions, RunStopped, model_identity, read_lines
from omnirrm_jax.eval.score import score

_TOP = {"name", "model", "output_dir", "run", "benchmarks"}
_MODEL = {"checkpoint", "lora", "tokenizer", "dtype"}
_BENCH = {"data", "media_root", "limit"}


class SuiteConfigError(UserError):
    """A config that names an unknown key, benchmark or a missing file."""


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise SuiteConfigError(f"{where} must be a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SuiteConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    return obj


def load_config(path: str) -> dict[str, Any]:
    """The checked config with paths made absolute."""
    if not os.path.isfile(path):
        raise SuiteConfigError(f"config {path} is not a file")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SuiteConfigError(f"{path} is not valid YAML: {e}") from None
    cfg = dict(_check_keys(cfg, _TOP, path))
    base = os.path.dirname(os.path.abspath(path))
    absolute = lambda p: None if p is None else os.path.normpath(os.path.join(base, os.path.expanduser(str(p))))  # noqa: E731
    model = dict(_check_keys(cfg.get("model"), _MODEL, f"{path}: model"))
    if "checkpoint" not in model:
        raise SuiteConfigError(f"{path}: model.checkpoint is required")
    for k in ("checkpoint", "lora", "tokenizer"):
        model[k] = absolute(model.get(k))
    run_fields = {f.name for f in dataclasses.fields(RunOptions)} - {"model"}  # the model is model.*
    run = dict(_check_keys(cfg.get("run") or {}, run_fields, f"{path}: run"))
    benches = _check_keys(cfg.get("benchmarks"), set(B.BENCHMARKS), f"{path}: benchmarks")
    if not benches:
        raise SuiteConfigError(f"{path}: benchmarks is empty")
    out = {}
    for name, spec in benches.items():
        spec = dict(_check_keys(spec, _BENCH, f"{path}: benchmarks.{name}"))
        if "data" not in spec:
            raise SuiteConfigError(f"{path}: benchmarks.{name}.data is required")
        spec["data"] = absolute(spec["data"])
        spec["media_root"] = absolute(spec.get("media_root")) or os.path.dirname(spec["data"])
        out[name] = spec
    return {"name": str(cfg.get("name") or os.path.basename(model["checkpoint"].rstrip(os.sep))), "model": model,
            "output_dir": absolute(cfg.get("output_dir") or "eval_out"), "run": run, "benchmarks": out}


def _versions() -> str:
    names = ("omnirrm_jax", "jax", "flax", "transformers", "numpy")
    return ", ".join(f"{n} {md.version(n)}" for n in names if _has(md, n))


def _has(md, name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def run_suite(config_path: str, *, progress: bool = True, load=load_judge) -> dict[str, str]:
    """Judges and scores every benchmark of the config with one model load; `load` (a `load_judge` alike) reads
    model.checkpoint (`omnirrm eval suite` passes one that also takes a training workdir)."""
    cfg = load_config(config_path)
    m = cfg["model"]
    opts = RunOptions(**cfg["run"], model=model_identity(m["checkpoint"], lora=m.get("lora"),
                                                         tokenizer=m.get("tokenizer"),
                                                         dtype=m.get("dtype") or "bfloat16"))
    rows_of = {name: read_benchmark(name, spec["data"], media_root=spec["media_root"], limit=spec.get("limit"))
               for name, spec in cfg["benchmarks"].items()}  # every file checked before the model loads
    model, tcfg, tok = load(m["checkpoint"], lora=m.get("lora"), tokenizer=m.get("tokenizer"),
                            dtype=m.get("dtype") or "bfloat16")
    judge = Judge(model, tcfg, tok, batch_size=opts.batch_size)
    out_dir = cfg["output_dir"]
    os.makedirs(out_dir, exist_ok=True)
    scores, runs = {}, {}
    for name, spec in cfg["benchmarks"].items():
        proto = B.protocol(name)
        path = os.path.join(out_dir, f"{name}.judgements.jsonl")
        run = BenchmarkRun(judge, proto, opts, media_root=spec["media_root"], output=path)
        try:
            runs[name] = run.run(rows_of[name], progress=progress)
        except RunStopped as e:  # one benchmark's bad data must not cost the others; the report says what stopped
            runs[name] = {**e.summary, "stopped": str(e)}
        scores[name] = {**score(proto, rows_of[name], read_lines(path), path=path,
                                subset=spec.get("limit") is not None), "run": runs[name]}
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(scores[name], f, indent=2, ensure_ascii=False)
    meta = {"checkpoint": m["checkpoint"] + (f" + LoRA {m['lora']}" if m.get("lora") else ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "orders": opts.orders, "seed": opts.seed, "versions": _versions()}
    paths = {k: os.path.join(out_dir, f"report.{ext}") for k, ext in
             (("report_md", "md"), ("report_json", "json"), ("report_png", "png"))}
    with open(paths["report_md"], "w", encoding="utf-8") as f:
        f.write(report.markdown(cfg["name"], scores, meta))
    with open(paths["report_json"], "w", encoding="utf-8") as f:
        json.dump({"name": cfg["name"], "meta": meta, "scores": scores,
                   "rows": report.model_rows(cfg["name"], scores), "published": B.PUBLISHED}, f, indent=2,
                  ensure_ascii=False)
    report.chart(cfg["name"], scores, paths["report_png"])
    return paths
