"""MetricWriter's TensorBoard event files (tensorboardX) load in TensorBoard's own reader; its JSONL matches.
Throughput leaves out the steps that compiled and the run's last read."""
import json
import numpy as np

from omnirrm_jax.training import metrics


def test_events_readable_by_tensorboard(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    for step in range(1, 4):
        w.write(step, {"train/loss": 1.0 / step, "train/lr": 1e-3})
    w.close()
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr"}
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert abs(events[1].value - 0.5) < 1e-7
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[2]["step"] == 3 and abs(rows[2]["train/loss"] - 1 / 3) < 1e-12
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
    w = metrics.MetricWriter(str(tmp_path / "run"))
    w.write(1, {"train/loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_flops_per_token_counts_weight_gradients_only_when_the_base_trains():
    from omnirrm_jax.models import config as C
    from omnirrm_jax.training.metrics import flops_per_token, matmul_params

    cfg = C.PRESETS["omni_3b"]()
    lora, full = flops_per_token(cfg, 3072), flops_per_token(cfg, 3072, full_finetune=True)
    assert full - lora == 2 * matmul_params(cfg)
    head = cfg.text.vocab_size * cfg.text.hidden_size  # run on 1024 of 3072 positions (max_target_length)
    assert abs(flops_per_token(cfg, 3072, loss_window=1024) - (lora - 4 * head * 2 / 3)) < 1e-6 * lora


def test_throughput_skips_compiling_steps_and_the_last_read(monkeypatch):
    """A run's log once read 60 tokens/s (step 1, compile included) and then 2.8 M (step 2, timed over nothing)."""
    clock, compiles = [0.0], [0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    tp = metrics.Throughput(lambda: compiles[0])

    def read(seconds, tokens=100, compiled=0, dispatched_next=True):
        clock[0] += seconds
        compiles[0] += compiled
        tp.step(tokens, dispatched_next=dispatched_next)

    read(30.0, compiled=5)  # step 1: setup and compile
    assert tp.rate() is None
    read(0.5)  # steady steps: 100 tokens in 0.5 s each
    read(0.5)
    assert tp.rate() == 200.0
    read(9.0, compiled=1)  # a new shape bucket compiles
    read(0.25)
    assert tp.rate() == 400.0  # only the steady step counts
    read(0.0001, dispatched_next=False)  # the last read follows no dispatch: nothing timed
    assert tp.rate() is None


def test_attention_is_counted_per_example_in_packed_and_padded_rows():
    """A packed row of short examples attends far less than one row-long example: the MFU count follows the
    examples, and a packed batch counts what the same examples unpacked count."""
    from omnirrm_jax.bench.data import examples_in
    from omnirrm_jax.models import config as C
    from omnirrm_jax.training.metrics import attention_span, flops_per_token
    from tests.models.test_packing import _examples, _packed, _unpacked
    cfg = C.tiny()
    exs, rows = _examples(cfg, with_image=True)
    lengths = np.array([len(e["input_ids"]) for e in exs], float)
    want = (lengths ** 2).sum() / lengths.sum()
    packed, unpacked = _packed(cfg, rows, 48), _unpacked(cfg, exs, 48)
    assert attention_span(packed) == attention_span(unpacked) == want < 48
    assert examples_in(packed) == examples_in(unpacked) == len(exs)
    t = cfg.text
    whole_row = flops_per_token(cfg, 48)
    per_key = 3 * t.num_layers * 2 * t.num_heads * t.head_dim  # the attention term per attended position
    assert flops_per_token(cfg, 48, attended=want) == whole_row - per_key * (48 - want)
