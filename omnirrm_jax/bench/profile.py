"""Where a benchmark's device time goes: a `jax.profiler` trace of a few steps, summarised by kernel.

Benchmarks take `--profile DIR`: extra steps after the timed ones run inside `trace(DIR)`, and `summarize(DIR)`
reads the Perfetto trace JSON the profiler writes next to its XPlane files and totals the device-side events
(GPU/TPU streams) by name and by kind (matmul, attention, collective, copy, other fusions). The raw trace stays in
DIR for Perfetto or TensorBoard; the summary is what a device call can bring back as text.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import glob
import gzip
import json
import os

# kernel-name fragments -> kind; first match wins (attention before gemm: cuDNN flash kernels contain "gemm")
KINDS = (
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("collective", ("nccl", "all-reduce", "allreduce", "all-gather", "allgather", "reduce-scatter",
                    "reducescatter", "collective", "all-to-all")),
    ("matmul", ("gemm", "xmma", "cutlass", "cublas", "nvjet", "matmul", "dot", "wgmma", "triton_gemm")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, fragments in KINDS:
        if any(f in low for f in fragments):
            return kind
    return "other"


@contextlib.contextmanager
def trace(log_dir: str | None):
    """`jax.profiler.trace` with a Perfetto JSON beside it; a no-op when `log_dir` is None."""
    if not log_dir:
        yield
        return
    import jax

    os.makedirs(log_dir, exist_ok=True)
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        yield


def _trace_file(log_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"{log_dir}: no perfetto_trace.json.gz under it (was the trace written?)")
    return found[-1]


def summarize(log_dir: str, top: int = 40, by_module: bool = False) -> dict:
    """Totals the newest trace under `log_dir`: the first device's events (process "/device:...:0") by kernel
    name and by kind. A CPU-only trace has no device processes; its XLA worker threads stand in for them.

    Returns {"source", "busy_ms", "span_ms", "kinds": {kind: ms}, "top": [{name, kind, ms, count, share}]}.
    `busy_ms` sums event durations (overlapping streams count twice); `span_ms` is first start to last end.
    With `by_module` (a trace holding several programs, e.g. a GRPO step's rollout, log-prob and update programs),
    also "modules": {program: {"ms", "runs", "kinds", "top"}}: each kernel counted in the program its event names
    (`hlo_module`), or else in the "XLA Modules" span of the same device that started last before it ("(none)" if
    that one had ended). Programs are told apart by name only: two jitted lambdas share "jit__lambda".
    """
    path = _trace_file(log_dir)
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    devices = sorted((n, p) for p, n in procs.items() if n.startswith("/device:"))
    # one device's events: on a mesh every device runs the same program, and summing them would double it
    device = {devices[0][1]} if devices else set()
    thread = lambda e: threads.get((e["pid"], e.get("tid")), "")  # noqa: E731
    if device:
        # GPU: kernels on "Stream #..." threads; the "XLA Ops" thread names the HLO op of each; "XLA Modules"
        # spans whole programs (left out: it would count every step twice)
        source = "device"
        streams = {(e["pid"], e.get("tid")) for e in events if e.get("pid") in device and e.get("ph") == "X"
                   and thread(e).startswith("Stream")}
        if streams:
            keep = lambda e: (e["pid"], e.get("tid")) in streams  # noqa: E731
        else:
            keep = lambda e: e["pid"] in device and thread(e) not in ("XLA Modules", "XLA Ops", "Steps")  # noqa
        keep_ops = lambda e: e["pid"] in device and thread(e) == "XLA Ops"  # noqa: E731
    else:
        source = "host XLA threads"
        keep = lambda e: thread(e).startswith("tf_XLA") and not e["name"].startswith("ThunkExecutor")  # noqa
        keep_ops = lambda e: False  # noqa: E731
    kernels, span = _totals(events, keep)
    ops, _ = _totals(events, keep_ops)
    busy = sum(t for t, _ in kernels.values())
    out = {"source": source + (f" {devices[0][0]} of {len(devices)}" if devices else ""), "file": path,
           "busy_ms": round(busy, 3), "span_ms": round(span, 3), "kinds": _kinds(kernels),
           "top": _rows(kernels, busy, top), "top_ops": _rows(ops, sum(t for t, _ in ops.values()), top)}
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
                   if e.get("ph") == "X" and e["pid"] in device and thread(e) == "XLA Modules")
    out["idle"] = _idle(events, keep, spans)
    if by_module:
        out["modules"] = _by_module(events, keep, spans, top)
    return out


def _program_of(e: dict, spans: list, starts: list) -> str:
    """The program a kernel event belongs to: its own `hlo_module`, else the "XLA Modules" span holding its start,
    else "(none)"."""
    name = (e.get("args") or {}).get("hlo_module")
    if name is None:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        name = spans[i][2] if i >= 0 and e["ts"] < spans[i][1] else "(none)"
    return name


def _idle(events: list, keep, modules: list, top: int = 15) -> dict:
    """Where the device waits: the gaps in the union of the kept kernels' intervals (all streams of one device),
    totalled by the pair of programs on either side (`_program_of`): a gap between two programs is the host
    launching the next one (or waiting on a transfer); a gap inside one is its own launch latency.
    {"ms", "gaps", "by_transition": [{before, after, ms, count}], "largest": [{at_ms, ms, before, after}]}."""
    starts = [s for s, _, _ in modules]
    spans = sorted((e["ts"], e["ts"] + e["dur"], _program_of(e, modules, starts), e["name"])
                   for e in events if e.get("ph") == "X" and "dur" in e and keep(e))
    if not spans:
        return {"ms": 0.0, "gaps": 0, "by_transition": [], "largest": []}
    t0, end, last = spans[0][0], spans[0][1], spans[0]
    by = collections.defaultdict(lambda: [0.0, 0])
    largest = []
    for s in spans[1:]:
        if s[0] > end:
            gap = (s[0] - end) / 1e3
            key = (last[2], s[2])
            by[key][0] += gap
            by[key][1] += 1
            largest.append((gap, (end - t0) / 1e3, last, s))
        if s[1] > end:
            end, last = s[1], s
    largest.sort(key=lambda g: -g[0])
    rows = sorted(by.items(), key=lambda kv: -kv[1][0])[:top]
    return {"ms": round(sum(v[0] for v in by.values()), 3), "gaps": sum(v[1] for v in by.values()),
            "by_transition": [{"before": b, "after": a, "ms": round(ms, 3), "count": n} for (b, a), (ms, n) in rows],
            "largest": [{"at_ms": round(at, 3), "ms": round(gap, 3), "before": f"{p[2]}: {p[3][:80]}",
                         "after": f"{n[2]}: {n[3][:80]}"} for gap, at, p, n in largest[:top]]}


def _kinds(kernels: dict) -> dict:
    kinds = collections.Counter()
    for name, (t, _) in kernels.items():
        kinds[kind_of(name)] += t
    return {k: round(v, 3) for k, v in kinds.most_common()}


def _by_module(events: list, keep, spans: list, top: int) -> dict:
    """Kept kernels grouped by program: the event's own `hlo_module` (its args, as the profiler records kernels),
    else the program span holding its start. {program: {ms, runs, kinds, top}}."""
    starts = [s for s, _, _ in spans]
    groups = collections.defaultdict(list)
    run_ids = collections.defaultdict(set)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e or not keep(e):
            continue
        args = e.get("args") or {}
        name = _program_of(e, spans, starts)
        if "hlo_module" in args and "run_id" in args:
            run_ids[name].add(args["run_id"])
        groups[name].append(e)
    runs = dict(collections.Counter(name for _, _, name in spans))
    runs.update({name: len(ids) for name, ids in run_ids.items()})  # a program's run ids, where its kernels name them
    out = {}
    for name, evs in sorted(groups.items(), key=lambda kv: -sum(e["dur"] for e in kv[1])):
        kernels, _ = _totals(evs, lambda e: True)
        busy = sum(t for t, _ in kernels.values())
        out[name] = {"ms": round(busy, 3), "runs": runs.get(name, 0), "kinds": _kinds(kernels),
                     "top": _rows(kernels, busy, top)}
    return out


def _totals(events: list, keep) -> tuple[dict, float]:
    """{name: (ms, count)} of the kept complete events, and the ms from the first start to the last end."""
    ms, count = collections.Counter(), collections.Counter()
    start, end = float("inf"), float("-inf")
    for e in events:
        if e.get("ph") != "X" or "dur" not in e or not keep(e):
            continue
        ms[e["name"]] += e["dur"] / 1e3
        count[e["name"]] += 1
        start, end = min(start, e["ts"]), max(end, e["ts"] + e["dur"])
    return {n: (ms[n], count[n]) for n in ms}, ((end - start) / 1e3 if ms else 0.0)


def _rows(totals: dict, busy: float, top: int) -> list[dict]:
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"name": n[:160], "kind": kind_of(n), "ms": round(t, 3), "count": c,
             "share": round(t / busy, 4) if busy else 0.0} for n, (t, c) in ranked]


def print_summary(summary: dict, steps: int = 1, module_top: int = 25) -> None:
    """A readable table: per step when `steps` > 1; per program too when the summary has "modules"."""
    per = max(steps, 1)
    print(f"profile ({summary['source']}): busy {summary['busy_ms'] / per:.2f} ms/step, "
          f"span {summary['span_ms'] / per:.2f} ms/step", flush=True)
    print("  by kind: " + ", ".join(f"{k} {v / per:.2f} ms" for k, v in summary["kinds"].items()), flush=True)
    for title, key in (("kernels", "top"), ("HLO ops", "top_ops")):
        if summary.get(key):
            print(f"  top {title}:", flush=True)
        for r in summary.get(key, []):
            print(f"  {r['ms'] / per:9.3f} ms  {r['share']:6.1%}  x{r['count'] // per:<5d} {r['kind']:10s} "
                  f"{r['name']}", flush=True)
    idle = summary.get("idle")
    if idle and idle["gaps"]:
        print(f"  idle {idle['ms'] / per:.2f} ms/step in {idle['gaps'] // per} gaps; by programs either side:",
              flush=True)
        for r in idle["by_transition"]:
            print(f"  {r['ms'] / per:9.3f} ms  x{r['count'] // per:<6d} {r['before']} -> {r['after']}", flush=True)
        print("  largest gaps:", flush=True)
        for r in idle["largest"][:8]:
            print(f"  {r['ms']:9.3f} ms  at {r['at_ms']:.1f} ms  {r['before']} -> {r['after']}", flush=True)
    for name, m in summary.get("modules", {}).items():
        print(f"  program {name} (x{m['runs']}): {m['ms'] / per:.2f} ms/step; " + ", ".join(
            f"{k} {v / per:.2f}" for k, v in m["kinds"].items()), flush=True)
        for r in m["top"][:module_top]:
            print(f"    {r['ms'] / per:9.3f} ms  {r['share']:6.1%}  x{r['count'] // per:<6d} {r['kind']:10s} "
                  f"{r['name']}", flush=True)
