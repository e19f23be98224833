"""What the commands that load a model share: the `--dtype` choices, and the judge model of `omnirrm judge` and
`omnirrm eval`: an HF or Orbax checkpoint folder (`eval.judge_runner.load_judge`), or a training run's workdir,
judged with its newest checkpoint (LoRA merged, as `omnirrm export` would write it), so trying a run needs no export
first. Here, not in eval/: eval may not import training (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import logging

from omnirrm_jax.checkpoint.workdir import is_training_workdir

# `--dtype` of the commands that load a model: models.config.DTYPES (a test checks; the CLI's top stays light)
DTYPES = ("float32", "bfloat16", "float16")

log = logging.getLogger(__name__)


def load_judge_or_run(checkpoint: str, *, lora: str | None = None, tokenizer: str | None = None,
                      dtype: str = "float32"):
    """(model, config, tokenizer) like `load_judge`; a training workdir gives its newest checkpoint, merged, and the
    run's data.tokenizer unless `tokenizer` is given."""
    from omnirrm_jax.eval.judge_runner import UsageError, judge_tokenizer, load_judge

    if not is_training_workdir(checkpoint):
        return load_judge(checkpoint, lora=lora, tokenizer=tokenizer, dtype=dtype)
    if lora:
        raise UsageError(f"--lora applies to HF checkpoints; {checkpoint} is a training workdir, whose own LoRA "
                         "is merged from its checkpoint")
    from omnirrm_jax.training import export

    trained = export.load_trained(checkpoint, compute_dtype=dtype)
    model = export.merged(trained, dtype)
    source = tokenizer or trained.meta["config"]["data"]["tokenizer"]
    tok = judge_tokenizer(source, model.config)
    log.info("%s is a training workdir: judging with its checkpoint %d%s, tokenizer %s", checkpoint, trained.step,
             "" if trained.full_finetune else " (LoRA merged)", source)
    return model, model.config, tok
