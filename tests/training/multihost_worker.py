"""One process of a local multi-process run (tests/training/test_multihost.py starts two of these).

    python tests/training/multihost_worker.py CONFIG.yaml LEG OUT_DIR [--stop-after N]

The launch comes from the environment exactly as in production (`distributed.initialize_from_env`:
OMNIRRM_COORDINATOR / OMNIRRM_NUM_PROCESSES / OMNIRRM_PROCESS_ID), the config from YAML as `omnirrm sft` reads it.
A leg is one trainer call; add a trainer by adding an entry to LEGS that returns {"steps", "preempted", "state"}.
Process 0 writes OUT_DIR/LEG.json (steps, and the step every process stopped at) and OUT_DIR/LEG.npz (the trainable
parameters gathered from every process).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def _sft(config_path: str, stop_after: int | None) -> dict:
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import sft

    out = sft.train(config_lib.load_config(config_path), progress=False, stop_after=stop_after)
    return {"steps": out["micro_steps"], "preempted": out["preempted"], "state": out["state"]}


def _grpo(config_path: str, stop_after: int | None) -> dict:
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import grpo
    from omnirrm_jax.training.grpo_config import GRPOConfig

    out = grpo.train(config_lib.load_config(config_path, cls=GRPOConfig), progress=False, stop_after=stop_after)
    return {"steps": out["rollouts"], "preempted": out["preempted"], "state": out["state"]}


LEGS = {"sft": _sft, "grpo": _grpo}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("leg", choices=sorted(LEGS))
    p.add_argument("out")
    p.add_argument("--stop-after", type=int, default=None)
    args = p.parse_args(argv)

    from jax.experimental import multihost_utils

    import omnirrm_jax
    from omnirrm_jax.parallel import distributed

    launch = distributed.initialize_from_env()
    assert jax.process_count() == (launch.num_processes or 1), (launch, jax.process_count())
    out = LEGS[args.leg](args.config, args.stop_after)
    steps_per_process = distributed.allgather_json(out["steps"])  # equal when the processes agreed to stop
    leaves = jax.tree_util.tree_leaves_with_path(out["state"].trainable)
    gathered = {jax.tree_util.keystr(k): np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in leaves}
    if distributed.is_main():
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, f"{args.leg}.npz"), **gathered)
        with open(os.path.join(args.out, f"{args.leg}.json"), "w") as f:
            json.dump({"steps": out["steps"], "preempted": out["preempted"], "steps_per_process": steps_per_process,
                       "process_count": jax.process_count(), "device_count": jax.device_count(),
                       "package": os.path.dirname(omnirrm_jax.__file__)}, f)  # which checkout ran
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
