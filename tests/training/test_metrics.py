"""MetricWriter's TensorBoard event files (tensorboardX) load in TensorBoard's own reader; its JSONL matches."""
import json

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
