"""YAML configs map onto the dataclasses; unknown keys name the closest valid key."""
import glob

import pytest

from omnirrm_jax.training import config as C


def test_shipped_configs_load():
    from omnirrm_jax.training.grpo_config import GRPOConfig

    paths = sorted(glob.glob("configs/*.yaml"))
    assert paths
    for p in paths:
        if "/eval" in p:  # `omnirrm eval suite` configs
            from omnirrm_jax.eval.suite import load_config

            assert load_config(p)["benchmarks"]
            continue
        cls = GRPOConfig if "/grpo" in p else C.SFTConfig
        cfg = C.load_config(p, cls=cls)
        assert isinstance(cfg, cls)


def test_reference_hyperparameters_in_grpo_configs():
    from omnirrm_jax.training.grpo_config import GRPOConfig

    for p in ("configs/grpo_3b_lora.yaml", "configs/grpo_7b_lora.yaml"):
        cfg = C.load_config(p, cls=GRPOConfig)
        g = cfg.grpo
        assert (g.num_generations, g.beta, g.temperature, g.top_p, g.top_k) == (2, 0.04, 1.0, 0.95, 50)
        assert g.max_completion_length == 1024 and cfg.data.pipeline["max_length"] == 6144
        assert cfg.optim.learning_rate == 1e-5 and cfg.optim.warmup_ratio == 0.05 and cfg.run.num_epochs == 1
        # 8 GPUs x 1 completion x 2 accumulation = 16 completions per update
        assert cfg.data.pipeline["batch_size"] * g.num_generations * cfg.optim.grad_accum_steps == 16
        assert tuple(g.reward_weights) == (0.4, 0.4, 0.2)


def test_reference_hyperparameters_in_7b_config():
    cfg = C.load_config("configs/sft_7b_lora.yaml")
    assert cfg.optim.learning_rate == 5e-6 and cfg.optim.warmup_ratio == 0.03 and cfg.run.num_epochs == 2
    assert cfg.model.lora.rank == 8 and cfg.model.lora.alpha == 32
    assert cfg.data.pipeline["batch_size"] * cfg.optim.grad_accum_steps == 96
    assert cfg.data.pipeline["max_length"] == 3072


def test_overrides_and_unknown_keys(tmp_path):
    cfg = C.load_config(None, ["optim.learning_rate=1e-4", "run.max_steps=7", "data.train=[a, b]"])
    assert cfg.optim.learning_rate == 1e-4 and cfg.run.max_steps == 7 and cfg.data.train == ("a", "b")
    with pytest.raises(C.ConfigError, match="unknown config key optim.learning_rte; did you mean optim.learning_rate"):
        C.load_config(None, ["optim.learning_rte=1"])
    with pytest.raises(C.ConfigError, match="unknown config key modle; did you mean model"):
        C.load_config(None, ["modle.preset=tiny"])


def test_override_into_an_empty_yaml_section(tmp_path):
    """`model:` with nothing under it parses as None; an override into it said "model is not a section"."""
    path = tmp_path / "empty.yaml"
    path.write_text("model:\nrun:\n  seed: 1\n")
    cfg = C.load_config(str(path), ["model.preset=tiny", "run.max_steps=3"])
    assert cfg.model.preset == "tiny" and cfg.run.seed == 1 and cfg.run.max_steps == 3
    with pytest.raises(C.ConfigError, match="override run.seed.x: seed is not a section"):
        C.load_config(str(path), ["run.seed.x=2"])


def test_wrong_types_name_the_key():
    with pytest.raises(C.ConfigError, match="run.max_steps: 'many' is not a valid"):
        C.load_config(None, ["run.max_steps=many"])


def test_grpo_rows_per_chunk_must_hold_whole_prompts():
    from omnirrm_jax.training.grpo_config import GRPOSpec

    assert GRPOSpec(num_generations=4, rows_per_chunk=8).rows_per_chunk == 8
    with pytest.raises(ValueError, match="rows_per_chunk must be a multiple of grpo.num_generations=4"):
        GRPOSpec(num_generations=4, rows_per_chunk=6)


@pytest.mark.parametrize("override, message", [
    ("grpo.beta=-1", "grpo.beta must be >= 0"),
    ("grpo.beta=nan", "grpo.beta must be >= 0"),
    ("grpo.epsilon=1.5", r"grpo.epsilon must be in \[0, 1\)"),
    ("grpo.epsilon=-0.1", r"grpo.epsilon must be in \[0, 1\)"),
    ("grpo.epsilon_high=-0.3", "grpo.epsilon_high must be >= 0"),
    ("grpo.temperature=0", "grpo.temperature must be > 0"),
    ("grpo.top_p=3", r"grpo.top_p must be in \(0, 1\]"),
    ("grpo.top_p=0", r"grpo.top_p must be in \(0, 1\]"),
    ("grpo.top_k=-5", "grpo.top_k must be >= 0 .0 switches top-k off."),
    ("grpo.reward_mode=exact_typo", "grpo.reward_mode must be one of reference, got 'exact_typo'"),
    ("grpo.reward_weights=[x, y, z]", "grpo.reward_weights must be 3 finite numbers"),
    ("grpo.reward_weights=[0.5, 0.5]", "grpo.reward_weights must be 3 finite numbers"),
])
def test_grpo_values_that_would_train_wrongly_are_config_errors(override, message):
    """These loaded silently and then trained wrongly (beta < 0 rewards drifting from the reference) or failed at the
    first rollout under the sampler's own field name."""
    from omnirrm_jax.training.grpo_config import GRPOConfig

    with pytest.raises(C.ConfigError, match=message):
        C.load_config(None, [override], cls=GRPOConfig)


def test_grpo_sampling_and_clip_edges_are_accepted():
    from omnirrm_jax.training.grpo_config import GRPOConfig

    g = C.load_config(None, ["grpo.top_k=0", "grpo.top_p=1", "grpo.epsilon=0", "grpo.epsilon_high=0.28",
                             "grpo.beta=0", "grpo.reward_weights=[1, 0, 0]"], cls=GRPOConfig).grpo
    assert (g.top_k, g.top_p, g.epsilon, g.epsilon_high, g.beta) == (0, 1.0, 0.0, 0.28, 0.0)


def test_grpo_iterations_refuse_gradient_accumulation():
    """Accumulation applies an update every k micro-steps, and the num_iterations micro-steps of one rollout run back
    to back: every iteration saw the same weights (ratio 1, nothing clipped) and the run said nothing."""
    from omnirrm_jax.training.grpo_config import GRPOConfig

    with pytest.raises(C.ConfigError, match="grpo.num_iterations=2 needs optim.grad_accum_steps=1, got 2"):
        C.load_config(None, ["grpo.num_iterations=2", "optim.grad_accum_steps=2"], cls=GRPOConfig)
    for ok in (["grpo.num_iterations=2"], ["optim.grad_accum_steps=2"]):
        C.load_config(None, ok, cls=GRPOConfig)


def test_grpo_rows_per_chunk_must_divide_the_rollout():
    """The update splits a rollout's prompts into equal chunks; a chunk that does not divide them failed at the first
    update, after the rollout, naming no config key."""
    from omnirrm_jax.training.grpo_config import GRPOConfig

    with pytest.raises(C.ConfigError, match=r"grpo.rows_per_chunk=6 is 3 prompts a chunk, which must divide the "
                                            r"data.pipeline.batch_size=4 prompts"):
        C.load_config(None, ["grpo.rows_per_chunk=6", "data.pipeline={batch_size: 4}"], cls=GRPOConfig)
    for rows in (2, 4, 8, 16):  # 1, 2 or 4 prompts a chunk, or all 8 rows at once
        C.load_config(None, [f"grpo.rows_per_chunk={rows}", "data.pipeline={batch_size: 4}"], cls=GRPOConfig)


def test_max_target_length_is_an_sft_setting():
    from omnirrm_jax.training.grpo_config import GRPOConfig

    assert C.load_config(None, ["data.pipeline.max_target_length=1024"]).data.pipeline == \
        {"max_target_length": 1024}
    with pytest.raises(C.ConfigError, match="GRPO bounds its completions with grpo.max_completion_length"):
        C.load_config(None, ["data.pipeline.max_target_length=1024"], cls=GRPOConfig)


def test_cli_config_errors_are_one_line_with_status_2(tmp_path, capsys):
    from omnirrm_jax import cli

    assert cli.main(["sft", "configs/sft_3b_lora.yaml", "optim.learning_rte=1e-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnirrm sft: error: unknown config key optim.learning_rte; did you mean "
                          "optim.learning_rate") and "Traceback" not in err
    assert cli.main(["plan", str(tmp_path / "missing.yaml")]) == 2
    assert f"cannot read config file {tmp_path / 'missing.yaml'}" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert cli.main(["grpo", str(bad)]) == 2
    assert f"config file {bad} is not valid YAML" in capsys.readouterr().err


def test_an_adapter_needs_its_hf_base_and_excludes_full_finetuning():
    with pytest.raises(C.ConfigError, match="needs model.hf_path"):
        C.ModelSpec(preset="tiny", lora_path="/some/adapter")
    with pytest.raises(C.ConfigError, match="exclude each other"):
        C.ModelSpec(hf_path="/some/base", lora_path="/some/adapter", full_finetune=True)


@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=-1e-4", "optim: learning_rate must be a number > 0, got -0.0001"),
    ("optim.grad_accum_steps=0", "optim: grad_accum_steps must be an integer >= 1"),
    ("optim.schedule=cosnie", "optim: schedule must be one of cosine, linear, constant"),
    ("run.max_steps=0", "run: max_steps must be null .use num_epochs. or >= 1, got 0"),
    ("run.save_every=0", "run: save_every must be >= 1, got 0"),
    ("run.log_every=0", "run: log_every must be >= 1"),
    ("model.lora.rank=0", "model.lora: rank must be an integer >= 1"),
])
def test_out_of_range_values_are_config_errors_naming_the_key(override, message):
    """A negative learning rate used to train by gradient ascent and exit 0; max_steps=0 trained two epochs;
    save_every=0 and lora.rank=0 crashed mid-run with ZeroDivisionError."""
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(None, [override])


def test_packed_sft_needs_max_steps():
    """A packed batch holds a varying number of examples: num_epochs cannot size the run."""
    from omnirrm_jax.training.config import ConfigError, DataSpec, RunSpec, SFTConfig

    with pytest.raises(ConfigError, match="pack needs run.max_steps"):
        SFTConfig(data=DataSpec(pipeline={"pack": True}))
    assert SFTConfig(data=DataSpec(pipeline={"pack": True}), run=RunSpec(max_steps=10)).run.max_steps == 10
