"""Writing a model folder so that nothing of an older one survives in it and a failed write leaves the old one
whole: the files go into a new sibling folder, which takes the target's place only once complete.

Why: an HF export is several files (config, one or many safetensors shards, maybe an index). Writing them over an
older export left, e.g., its `model.safetensors.index.json` beside a new single `model.safetensors`, and loaders
then silently read the old weights through the stale index.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from omnirrm_jax.errors import UserError

# What our writers put at a folder's top level: an existing target holding anything else is not ours to replace.
MODEL_FILES = ("config.json", "adapter_config.json", "params", "model.safetensors", "model.safetensors.index.json")


class NotAModelDir(UserError):
    """The target exists and holds files that none of our writers made."""


@contextlib.contextmanager
def replacing(path: str):
    """Yields a new empty folder beside `path` to write into; when the block ends without error it replaces `path`
    (an older model folder there is removed after the swap); on error it is deleted and `path` is left as it was.

    Refuses (NotAModelDir) to replace an existing non-empty folder that holds none of MODEL_FILES, so a
    mistyped destination never deletes someone's data."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        entries = os.listdir(path)
        if entries and not any(e in MODEL_FILES or e.endswith(".safetensors") for e in entries):
            raise NotAModelDir(f"{path} exists and is not a model folder (it holds {sorted(entries)[:5]}); "
                               "choose an empty or new destination")
    elif os.path.exists(path):
        raise NotAModelDir(f"{path} exists and is not a folder")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.writing-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.replace(path, os.path.join(old, "dir"))
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
