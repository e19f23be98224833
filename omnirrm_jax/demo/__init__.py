"""`omnirrm demo`: the whole path on the embedded demo task, from nothing to a judge that perceives media.

  generate demo data (images, mp4, wav, arithmetic) -> `prep` (PyAV, librosa, ArrayRecord) -> SentencePiece
  tokenizer -> tiny thinker trained with SFT (full fine-tuning from random weights) -> held-out pairwise
  accuracy per modality from greedy judgements -> checkpoint saved and reloaded -> a short GRPO stage (LoRA on
  the SFT judge, rubric rewards; `demo.grpo`) -> merged export reloaded and evaluated again -> one judgement
  per modality; and a control run on blanked media, which must stay near chance.

Modules, each one stage (imports run one way: config <- data <- sft, grpo, evaluate; report; runner last):
  config    DemoConfig, DemoGRPOConfig
  data      prepare_demo_data (tests' fixture), prepare_data, train_tokenizer, buckets and pipeline shapes
  sft       sft_config, train, reload          grpo      the GRPO stage (probe, RL split, train, export)
  evaluate  held-out accuracy, example judgements      report   report rows, results table, environment
  criteria  the PASS/FAIL lines (what the demo promises)  seeds    min/median/max table over several seeds
  workdir   what a run writes under its workdir; a rerun's clean start
  runner    run_demo
Importing the package is light (numpy); JAX and the rest load when a stage runs.
"""

from omnirrm_jax.demo.config import DemoConfig, DemoGRPOConfig
from omnirrm_jax.demo.data import (DEMO_VIDEO, SEQ_BUCKETS, DemoData, media_buckets, pipeline_config,
                                   prepare_data, prepare_demo_data, train_tokenizer)
from omnirrm_jax.demo.runner import run_demo
from omnirrm_jax.demo.sft import sft_config

__all__ = ["DEMO_VIDEO", "SEQ_BUCKETS", "DemoConfig", "DemoData", "DemoGRPOConfig", "media_buckets",
           "pipeline_config", "prepare_data", "prepare_demo_data", "run_demo", "sft_config", "train_tokenizer"]
