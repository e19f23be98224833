"""The demo's workdir: what a demo run writes there, and the clean start of a rerun.

Why: a rerun in a used workdir resumed the old SFT checkpoint while it printed "SFT of a tiny thinker from random
weights", and a rerun with another --seed had its regenerated data refused by prep. A demo run should reproduce the
demo, so it first removes what an earlier demo run wrote there (OUTPUTS) and nothing else; a folder that holds such
names but was never a demo workdir (no MARKER, no demo_report.json) is refused instead of emptied.
"""

from __future__ import annotations

import os
import shutil

from omnirrm_jax.errors import UserError

MARKER = ".omnirrm_demo"  # written first by every demo run
# every stage's folder or file under the workdir (data, control, tokenizer, SFT, GRPO, export, report)
OUTPUTS = ("data", "data_blank", "tokenizer.model", "sft", "sft_control", "sft_hf", "grpo", "grpo_export",
           "demo_report.json")


def start_clean(workdir: str) -> list[str]:
    """Makes `workdir` ready for a demo run: removes an earlier demo run's OUTPUTS (only those) and writes MARKER.
    Returns the names removed; raises UserError for a folder that holds such names but is not a demo workdir."""
    os.makedirs(workdir, exist_ok=True)
    found = [name for name in OUTPUTS if os.path.lexists(os.path.join(workdir, name))]
    ours = os.path.exists(os.path.join(workdir, MARKER)) or "demo_report.json" in found
    if found and not ours:
        raise UserError(f"--workdir {workdir} holds {', '.join(found)} but is not a demo workdir (no {MARKER}); "
                        "choose a new or empty --workdir (a demo run replaces these)")
    for name in found:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    with open(os.path.join(workdir, MARKER), "w") as f:
        f.write("omnirrm demo workdir: a demo run removes and rewrites " + ", ".join(OUTPUTS) + "\n")
    return found
