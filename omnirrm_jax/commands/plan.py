"""`omnirrm plan CONFIG [key.sub=value ...] [--devices N --mesh ...]`: per-device memory of a training run on a
mesh (`training.plan`), before renting the machines."""

from __future__ import annotations

import argparse

PLATFORMS = ("gpu", "h100", "h200", "tpu-v4", "tpu-v5e", "tpu-v5p")  # sorted(training.plan.HBM_GIB) (a test checks)


class _Intermixed:
    """Parses intermixed, so overrides may follow the options (`omnirrm plan CONFIG --devices 8 key=value`).
    The top-level parser cannot parse intermixed (it has subcommands), so this one does it for its own
    arguments; the guard lets argparse's intermixed pass call the plain parse underneath. A mixin over the
    parser class the CLI gives its subcommands (so errors stay one line)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="per-device memory of a run config on a mesh: `omnirrm plan --help`",
                       description="`omnirrm plan`: per-device memory of a training run on a given mesh, before "
                                   "renting the machines.")
    p.__class__ = type("IntermixedParser", (_Intermixed, type(p)), {})  # subparsers share the parent's class
    p.add_argument("config", help="SFT or GRPO YAML run config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--devices", type=int, default=None, help="devices; default: the three standard layouts")
    p.add_argument("--mesh", default=None, help="data=..,fsdp=..,tensor=.. (default: the config's mesh)")
    p.add_argument("--platform", default="gpu", choices=PLATFORMS, help="sets the HBM per device")
    p.add_argument("--preset", default=None, help="model preset when model.hf_path is not readable here")
    return p


def run(args: argparse.Namespace) -> int:
    from omnirrm_jax.training import plan

    print(plan.report(args.config, args.overrides, devices=args.devices, mesh=args.mesh, platform=args.platform,
                      preset=args.preset))
    return 0
