"""The SFT step: golden loss, LoRA-only updates, non-finite updates skipped, sharded == unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omnirrm_jax.models import config as C
from omnirrm_jax.models.thinker import Thinker, prepare_inputs
from omnirrm_jax.training import lora, loop, optim, sft
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.training.state import create_train_state


def _batch(cfg, B=4, T=24, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 400, (B, T))
    mask = np.ones((B, T), np.int32)
    mask[1, :5] = 0
    batch = prepare_inputs(cfg, ids, mask)
    loss_mask = np.zeros((B, T), np.int32)
    loss_mask[:, T // 2:] = 1
    batch["loss_mask"] = loss_mask
    batch["example_index"] = np.arange(B)
    return batch


def _lora_model(cfg, full=False):
    m = Thinker(cfg, rngs=nnx.Rngs(0))
    if not full:
        lora.apply_lora(m, lora.LoraConfig(rank=4, alpha=8), nnx.Rngs(1))
    return m


def _state(cfg, mesh, full=False, lr=1e-2):
    def model_fn():
        return _lora_model(cfg, full)
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=lr, warmup_ratio=0.0, weight_decay=0.0), 100)
    state, shardings = create_train_state(model_fn, tx, mesh, full_finetune=full)
    return state, shardings, tx


def _run(cfg, mesh, steps=3, batch=None, loss_window=None):
    state, shardings, tx = _state(cfg, mesh)
    step_fn = sft.jit_sft_step(state, tx, shardings, loss_window=loss_window)
    batch = batch or _batch(cfg)
    losses = []
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    for _ in range(steps):
        trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, batch)
        losses.append(float(m["loss"]))
    return losses, int(step), trainable, state


def test_golden_first_steps_and_lora_only_updates():
    """Golden values of a tiny config. Update them only when the model init, the LoRA init or the loss
    definition changes on purpose (and say why in the commit)."""
    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    losses, step, trainable, state = _run(cfg, mesh)
    assert step == 3
    assert losses[2] < losses[0]
    np.testing.assert_allclose(losses[0], GOLDEN_STEP0, rtol=1e-4)
    # only LoRA factors are trainable; the frozen base is untouched
    assert all("lora_" in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable))


GOLDEN_STEP0 = 6.716585  # tiny(), seed 0, LoRA r=4 a=8, lr 1e-2, the batch of _batch()


def test_sharded_8_devices_equals_single_device():
    cfg = C.tiny()
    one = _run(cfg, S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1]))[0]
    eight = _run(cfg, S.make_mesh(S.MeshConfig(data=2, fsdp=2, tensor=2)))[0]
    np.testing.assert_allclose(eight, one, rtol=2e-5)


def test_non_finite_update_is_skipped_and_counted():
    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, shardings, tx = _state(cfg, mesh)
    step_fn = sft.jit_sft_step(state, tx, shardings)
    batch = _batch(cfg)
    before = jax.tree.map(np.asarray, state.trainable)
    # NaN inputs through the embeddings: poison the frozen embedding table
    frozen = nnx.map_state(lambda p, x: jnp.full_like(x, jnp.nan) if p[-1] == "embedding" else x, state.frozen)
    trainable, opt_state, step, m = step_fn(state.trainable, frozen, state.opt_state, state.step, batch)
    assert not bool(m["finite"]) and int(step) == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), trainable, before)
    guard = loop.NonFiniteGuard(limit=2)
    guard.update(False, 7, batch)
    with pytest.raises(FloatingPointError, match=r"2 consecutive non-finite updates; last at step 8, batch "
                                                 r"examples \[0, 1, 2, 3\]"):
        guard.update(False, 8, batch)


def test_loss_window_step_equals_the_whole_row_step():
    """data.pipeline.max_target_length: the step that runs the head on the last 12 positions only trains exactly as
    the whole-row step when every target is among them; a batch with targets before the window makes no update and
    reports them, and the run loop's error names the examples."""
    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    whole, _, t_whole, _ = _run(cfg, mesh)
    windowed, _, t_windowed, _ = _run(cfg, mesh, loss_window=12)
    np.testing.assert_allclose(windowed, whole, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 t_windowed, t_whole)
    state, shardings, tx = _state(cfg, mesh)
    before = jax.tree.map(np.asarray, state.trainable)
    step_fn = sft.jit_sft_step(state, tx, shardings, loss_window=6)
    batch = _batch(cfg)  # 12 targets a row
    trainable, _, step, m = step_fn(state.trainable, state.frozen, state.opt_state, state.step, batch)
    assert int(m["targets_outside_window"]) == 4 * 6 and int(m["target_tokens"]) == 4 * 6 and int(step) == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), trainable, before)
    batch["loss_mask"][:, :] = 0
    batch["loss_mask"][2, 5:] = 1
    with pytest.raises(ValueError, match=r"micro-step 7: 13 target tokens lie before the last 6 positions .* "
                                         r"examples among them: \[2\]"):
        raise sft.loss_window_error(batch, 6, 7, 13)


def test_logged_learning_rate_is_the_rate_each_update_applied_under_accumulation():
    """train/lr indexed the update schedule with the micro-step count: with accumulation 2 the first update (rate
    lr(0)) was logged as lr(2). It now comes from the optimizer's update count; the first update's size checks the
    rate it really used (Adam's first step moves each entry by lr * g / (|g| + eps), ~lr)."""
    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    ocfg = optim.OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.0, grad_accum_steps=2)
    lr_fn, updates = optim.learning_rate_schedule(ocfg, 4), 4  # cosine over 4 updates, 8 micro-steps
    tx = optim.make_optimizer(ocfg, updates)
    state, shardings = create_train_state(lambda: _lora_model(cfg), tx, mesh, full_finetune=False)
    step_fn = sft.jit_sft_step(state, tx, shardings)
    batch = _batch(cfg)
    trainable, opt_state, step, logged = state.trainable, state.opt_state, state.step, []
    for micro in range(1, 2 * updates + 1):
        before = jax.tree.map(np.asarray, trainable)
        trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, batch)
        logged.append(optim.applied_learning_rate(lr_fn, m["updates"]))
        if micro == 2:
            moved = max(float(np.abs(np.asarray(a) - b).max()) for a, b in
                        zip(jax.tree.leaves(trainable), jax.tree.leaves(before)))
            np.testing.assert_allclose(moved, float(lr_fn(0)), rtol=1e-4)
    # update u is applied at micro-step 2(u + 1) at lr(u); between boundaries the last applied rate is logged
    assert logged == [float(lr_fn(max(micro // 2 - 1, 0))) for micro in range(1, 2 * updates + 1)]
    assert len(set(logged)) == updates and int(opt_state.gradient_step) == updates


def test_accumulated_update_is_the_whole_windows_token_mean():
    """SFT accumulation weighs micro-steps by their target tokens, as HF Trainer (>= 4.46) does: two micro-batches
    with 2 and 20 targets give the update of one step on both together (SGD at rate 1, so the update is the
    gradient itself). optax.MultiSteps' mean of the two micro-batches' means is another update (the test's teeth),
    and the optimizer's update count moves only at the boundary."""
    import optax

    cfg = C.tiny()
    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    whole = _batch(cfg)
    whole["loss_mask"][:2, :] = 0
    whole["loss_mask"][0, -2:] = 1  # micro-batch 1 (rows 0, 1): 2 targets; micro-batch 2 (rows 2, 3): 20
    halves = [{k: (v[:, :2] if k == "position_ids" else v[:2]) for k, v in whole.items()},
              {k: (v[:, 2:] if k == "position_ids" else v[2:]) for k, v in whole.items()}]

    def after(tx, batches):
        state, shardings = create_train_state(lambda: _lora_model(cfg), tx, mesh, full_finetune=False)
        step_fn = sft.jit_sft_step(state, tx, shardings)
        trainable, opt_state, step = state.trainable, state.opt_state, state.step
        counts = []
        for b in batches:
            trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, b)
            counts.append(int(m["updates"]))
        return jax.tree.leaves(jax.tree.map(np.asarray, trainable)), counts

    token_mean = optim.token_mean_accumulation(optax.sgd(1.0), 2)
    got, counts = after(token_mean, halves)
    want, _ = after(optax.sgd(1.0), [whole])
    means, _ = after(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2), halves)
    assert counts == [0, 1]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(m - w).max()) for m, w in zip(means, want)) > 100 * max(
        float(np.abs(g - w).max()) for g, w in zip(got, want))


def test_token_mean_accumulation_windows_restart_and_skip_empty_micro_steps():
    """The token count restarts after each boundary; a micro-step with no targets changes nothing."""
    import optax

    tx = optim.token_mean_accumulation(optax.sgd(1.0), 2)
    p = {"w": jnp.zeros(2)}
    s = tx.init(p)
    u, s = tx.update({"w": jnp.array([1.0, 0.0])}, s, p, tokens=3)
    u, s = tx.update({"w": jnp.array([0.0, 1.0])}, s, p, tokens=1)
    np.testing.assert_allclose(u["w"], [-0.75, -0.25])
    assert float(s.tokens) == 0 and optim.update_count(s, 99) == 1
    u, s = tx.update({"w": jnp.array([5.0, 5.0])}, s, p, tokens=0)  # no targets: its (zero) gradient has no weight
    u, s = tx.update({"w": jnp.array([0.0, 2.0])}, s, p, tokens=4)
    np.testing.assert_allclose(u["w"], [0.0, -2.0])


def test_resuming_a_checkpoint_of_the_older_accumulation_is_refused(tmp_path):
    """A workdir whose SFT checkpoint accumulated by optax.MultiSteps' mean (no "accumulation" in its meta), or by
    another kind than this run's (grad_accum_steps 1 against > 1), has another optimizer-state structure: a clear
    error before anything loads. Same kind resumes, for both trainers and for metas of either age."""
    from omnirrm_jax.checkpoint.manager import CheckpointManager
    from omnirrm_jax.errors import UserError
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import preflight

    def workdir(name, accum, meta):
        mngr = CheckpointManager(str(tmp_path / name / "checkpoints"))
        cfg = config_lib.to_dict(config_lib.load_config(None, [f"optim.grad_accum_steps={accum}"]))
        mngr.save(4, state={"x": np.zeros(2, np.float32)}, data_state={}, meta={"config": cfg, **meta}, force=True)
        mngr.close()
        return str(tmp_path / name)

    cfg = config_lib.load_config(None, ["optim.grad_accum_steps=12"])
    assert preflight.accumulation(cfg, "sft") == "token_mean"
    assert preflight.accumulation(cfg, "grpo") == "micro_step_mean"
    refused = "step 4 accumulated gradients by {}, this run by {}"
    with pytest.raises(UserError, match=refused.format("the mean of the micro-steps' gradients",
                                                       r"the window's token mean \(SFT\)")):
        preflight.check_workdir(workdir("old", 12, {"trainer": "sft"}), "sft", accumulation="token_mean")
    with pytest.raises(UserError, match=refused.format("no accumulation", "the window")):
        preflight.check_workdir(workdir("k1", 1, {"trainer": "sft", "accumulation": None}), "sft",
                                accumulation="token_mean")
    preflight.check_workdir(workdir("new", 12, {"trainer": "sft", "accumulation": "token_mean"}), "sft",
                            accumulation="token_mean")
    preflight.check_workdir(workdir("none", 1, {"trainer": "sft"}), "sft", accumulation=None)
    preflight.check_workdir(workdir("grpo", 2, {"trainer": "grpo"}), "grpo", accumulation="micro_step_mean")
    preflight.check_workdir(workdir("noconfig", 1, {"trainer": "sft", "config": None}), "sft", accumulation=None)
