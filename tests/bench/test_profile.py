"""The trace summary: device kernels only (one device of a mesh), by name and by kind."""
import gzip
import json

import pytest

from omnirrm_jax.bench import profile


def _write(tmp_path, events):
    d = tmp_path / "plugins" / "profile" / "run1"
    d.mkdir(parents=True)
    with gzip.open(d / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_summary_keeps_one_device_streams(tmp_path):
    meta = [{"ph": "M", "pid": p, "name": "process_name", "args": {"name": n}}
            for p, n in ((1, "/host:CPU"), (7, "/device:GPU:0"), (8, "/device:GPU:1"))]
    meta += [{"ph": "M", "pid": p, "tid": t, "name": "thread_name", "args": {"name": n}}
             for p, t, n in ((7, 1, "Stream #13(Compute)"), (7, 2, "XLA Modules"), (7, 3, "XLA Ops"),
                             (8, 1, "Stream #13(Compute)"))]

    def ev(pid, tid, name, ts, dur):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}

    events = meta + [
        ev(7, 1, "nvjet_sm90_tst_256x128", 0, 3000), ev(7, 1, "nvjet_sm90_tst_256x128", 3000, 3000),
        ev(7, 1, "cudnn_generated_fort_native_sdpa_sm90_flash_bprop", 6000, 2000),
        ev(7, 1, "ncclDevKernel_AllReduce_Sum_f32", 8000, 1000), ev(7, 1, "loop_add_fusion", 9000, 1000),
        ev(7, 2, "jit_sft_step", 0, 10000),  # the whole program: not a kernel
        ev(7, 3, "fusion.12", 0, 500),  # an HLO op name
        ev(8, 1, "nvjet_sm90_tst_256x128", 0, 99000),  # the other device: left out
        ev(1, 5, "PjitFunction", 0, 10000),  # host
    ]
    _write(tmp_path, events)
    s = profile.summarize(str(tmp_path))
    assert s["source"] == "device /device:GPU:0 of 2"
    assert s["busy_ms"] == pytest.approx(10.0) and s["span_ms"] == pytest.approx(10.0)
    assert s["kinds"] == {"matmul": 6.0, "attention": 2.0, "collective": 1.0, "other": 1.0}
    assert s["top"][0] == {"name": "nvjet_sm90_tst_256x128", "kind": "matmul", "ms": 6.0, "count": 2, "share": 0.6}
    assert [r["name"] for r in s["top_ops"]] == ["fusion.12"]


def test_missing_trace_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no perfetto_trace.json.gz"):
        profile.summarize(str(tmp_path))


def test_kernels_grouped_by_the_program_running_them(tmp_path):
    """by_module: each kernel counts for the device's "XLA Modules" span holding its start (a GRPO step runs
    its rollout, log-prob and update programs in one trace)."""
    meta = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    meta += [{"ph": "M", "pid": 7, "tid": t, "name": "thread_name", "args": {"name": n}}
             for t, n in ((1, "Stream #13(Compute)"), (2, "XLA Modules"))]

    def ev(tid, name, ts, dur):
        return {"ph": "X", "pid": 7, "tid": tid, "name": name, "ts": ts, "dur": dur}

    events = meta + [ev(2, "jit__decode_jit", 0, 5000), ev(2, "jit_grpo_step", 6000, 4000),
                     ev(2, "jit__decode_jit", 20000, 1000),
                     ev(1, "nvjet_gemm", 100, 3000), ev(1, "loop_fusion", 3200, 1000),
                     ev(1, "nvjet_gemm", 6000, 2000), ev(1, "flash_bprop", 8000, 1500),
                     ev(1, "memset", 11000, 500), ev(1, "nvjet_gemm", 20000, 1000)]
    _write(tmp_path, events)
    m = profile.summarize(str(tmp_path), by_module=True)["modules"]
    assert list(m) == ["jit__decode_jit", "jit_grpo_step", "(none)"]  # by device time
    assert m["jit__decode_jit"]["ms"] == pytest.approx(5.0) and m["jit__decode_jit"]["runs"] == 2
    assert m["jit__decode_jit"]["kinds"] == {"matmul": 4.0, "other": 1.0}
    assert m["jit_grpo_step"]["kinds"] == {"matmul": 2.0, "attention": 1.5}
    assert m["(none)"]["ms"] == pytest.approx(0.5) and m["(none)"]["runs"] == 0
    assert "modules" not in profile.summarize(str(tmp_path))


def test_kernels_name_their_program(tmp_path):
    """A kernel event whose args name its program (`hlo_module`, as the profiler writes them) counts there, its
    runs counted by distinct run ids."""
    meta = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 7, "tid": 1, "name": "thread_name", "args": {"name": "Stream #13(Compute)"}}]

    def ev(name, ts, dur, module, run):
        return {"ph": "X", "pid": 7, "tid": 1, "name": name, "ts": ts, "dur": dur,
                "args": {"hlo_module": module, "hlo_op": "fusion.1", "run_id": run}}

    _write(tmp_path, meta + [ev("nvjet_gemm", 0, 2000, "jit_grpo_step", "1"), ev("loop_fusion", 2000, 500,
                                                                                   "jit_grpo_step", "1"),
                             ev("nvjet_gemm", 3000, 1000, "jit__decode_jit", "2"),
                             ev("nvjet_gemm", 5000, 1000, "jit__decode_jit", "3")])
    m = profile.summarize(str(tmp_path), by_module=True)["modules"]
    assert {n: (v["ms"], v["runs"]) for n, v in m.items()} == {"jit_grpo_step": (2.5, 1), "jit__decode_jit": (2.0, 2)}


def test_runs_not_counted_twice_where_spans_and_run_ids_both_exist(tmp_path):
    meta = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    meta += [{"ph": "M", "pid": 7, "tid": t, "name": "thread_name", "args": {"name": n}}
             for t, n in ((1, "Stream #13(Compute)"), (2, "XLA Modules"))]
    events = meta + [{"ph": "X", "pid": 7, "tid": 2, "name": "jit_step", "ts": 0, "dur": 5000},
                     {"ph": "X", "pid": 7, "tid": 1, "name": "nvjet_gemm", "ts": 10, "dur": 1000,
                      "args": {"hlo_module": "jit_step", "run_id": "1"}}]
    _write(tmp_path, events)
    assert profile.summarize(str(tmp_path), by_module=True)["modules"]["jit_step"]["runs"] == 1


def test_idle_gaps_between_and_inside_programs(tmp_path):
    """The device's idle time: gaps in the union of kernel intervals over all streams (an overlapping kernel on a
    second stream fills its gap), totalled by the programs on either side."""
    meta = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    meta += [{"ph": "M", "pid": 7, "tid": t, "name": "thread_name", "args": {"name": n}}
             for t, n in ((1, "Stream #13(Compute)"), (2, "Stream #14(Compute)"))]

    def ev(tid, name, ts, dur, module):
        return {"ph": "X", "pid": 7, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": {"hlo_module": module}}

    events = meta + [ev(1, "gemm", 0, 1000, "jit_decode"), ev(1, "fusion", 1100, 900, "jit_decode"),  # 0.1 gap
                     ev(2, "copy", 1900, 600, "jit_decode"),  # overlaps: the union runs to 2500
                     ev(1, "gemm", 5500, 1000, "jit_logprobs"),  # 3.0 ms between programs
                     ev(1, "gemm", 6600, 400, "jit_logprobs")]  # 0.1 gap
    _write(tmp_path, events)
    idle = profile.summarize(str(tmp_path))["idle"]
    assert idle["ms"] == pytest.approx(3.2) and idle["gaps"] == 3
    assert idle["by_transition"][0] == {"before": "jit_decode", "after": "jit_logprobs", "ms": 3.0, "count": 1}
    assert {(r["before"], r["after"]): r["count"] for r in idle["by_transition"]} == {
        ("jit_decode", "jit_logprobs"): 1, ("jit_decode", "jit_decode"): 1, ("jit_logprobs", "jit_logprobs"): 1}
    assert idle["largest"][0]["ms"] == pytest.approx(3.0) and idle["largest"][0]["at_ms"] == pytest.approx(2.5)
    assert idle["largest"][0]["before"] == "jit_decode: copy"


def test_idle_gaps_name_programs_by_their_spans_without_hlo_module(tmp_path):
    meta = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    meta += [{"ph": "M", "pid": 7, "tid": t, "name": "thread_name", "args": {"name": n}}
             for t, n in ((1, "Stream #13(Compute)"), (2, "XLA Modules"))]

    def ev(tid, name, ts, dur):
        return {"ph": "X", "pid": 7, "tid": tid, "name": name, "ts": ts, "dur": dur}

    _write(tmp_path, meta + [ev(2, "jit_rollout", 0, 2000), ev(2, "jit_update", 3000, 2000),
                             ev(1, "gemm", 0, 1000), ev(1, "gemm", 3500, 1000)])
    idle = profile.summarize(str(tmp_path))["idle"]
    assert idle["by_transition"] == [{"before": "jit_rollout", "after": "jit_update", "ms": 2.5, "count": 1}]
