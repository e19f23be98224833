"""TFDS builder ``omni_preference``: the same record bytes as ``omnirrm prep``, stored as a TFDS dataset.

Why: TPU users keep training data in a bucket and read it with ``tfds.data_source`` (random access over
ArrayRecord, no TensorFlow needed at read time) feeding Grain. The builder runs ``data_prep.rows`` row by row, as
``prep`` does (same path rules, quarantine reasons and worker pool), so each example's single ``record`` feature
holds exactly the bytes ``prep`` writes for that row; ``omnirrm_jax.data.records.decode_record`` reads both.
Differences from ``prep``: TFDS orders examples by a hash of their key (``{file}:{line}``), bad rows are logged
rather than written to quarantine.jsonl, and there is no shard-level resume (TFDS rebuilds a dataset as a whole).
The manual dir must be local (media are decoded from local files); ``data_dir`` may be a bucket.

Verified here without TensorFlow installed: tensorflow-datasets 4.9 writes and reads ``file_format="array_record"``
with numpy only (its vendored tf.train.Example protos).

Use (importing this module registers the builder; the released rows need ``path_rewrites``, e.g. a custom
``OmniPreferenceConfig(name="sft_local", path_rewrites=(("/data/", ""),))`` passed as ``config=``)::

    import data_prep.tfds_omni_preference
    tfds.builder("omni_preference/sft", data_dir="gs://bucket/tfds").download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/local/omni_preference"))
    src = tfds.data_source("omni_preference/sft", data_dir="gs://bucket/tfds", split="train")
    rec = records.decode_record(src[0]["record"])     # readers without this code: tfds.builder_from_directory
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from data_prep import rows as P
from omnirrm_jax.data import media as M
from omnirrm_jax.data import records as R

log = logging.getLogger("omnirrm.tfds")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class OmniPreferenceConfig(tfds.core.BuilderConfig):
    """Media settings (part of the dataset's identity) and build-time knobs.

    ``path_rewrites``: (old prefix, new prefix) pairs for the absolute paths in the released rows (e.g.
    ``("/data/", "")``); ``num_workers``: media processes (None: all CPUs, 0: in-process)."""

    media: M.MediaConfig = M.MediaConfig()
    use_audio_in_video: bool = False
    path_rewrites: tuple = ()
    num_workers: int | None = None
    max_bad_ratio: float = 0.1


class OmniPreference(tfds.core.GeneratorBasedBuilder):
    """Omni-Preference (ms-swift JSONL + media) as ``omnirrm_jax.data.records`` records."""

    VERSION = tfds.core.Version(f"{R.VERSION}.0.0")  # major version = record schema version
    RELEASE_NOTES = {"1.0.0": "Records of omnirrm_jax.data.records schema version 1."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the ms-swift JSONL files and their media in one local folder (the manual dir):
      <manual_dir>/<split>/*.jsonl for split in train/validation/test, or <manual_dir>/*.jsonl (all train);
      media files anywhere under <manual_dir>; relative media paths are taken from <manual_dir>, absolute ones
      must lie under it (or be mapped there with the config's path_rewrites). Paths leaving it are rejected.
    """
    BUILDER_CONFIGS = [
        OmniPreferenceConfig(name="sft", description="Reference SFT media settings (FPS=1, FPS_MAX_FRAMES=20)."),
        OmniPreferenceConfig(name="grpo", media=M.MediaConfig.grpo(),
                             description="Reference GRPO media settings (FPS_MAX_FRAMES=8)."),
    ]
    DEFAULT_CONFIG_NAME = "sft"
    # tfds derives code_path only to find a checksums file (we download nothing); deriving it imports
    # importlib_resources, which tfds 4.9.10 does not install on Python >= 3.9 (tensorflow/datasets#11212).
    code_path = None

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Rubric-grounded preference rows with pre-extracted media; decode the 'record' bytes with "
                        "omnirrm_jax.data.records.decode_record.",
            features=tfds.features.FeaturesDict({"record": tfds.features.Tensor(shape=(), dtype=np.object_)}),
            homepage="https://github.com/tmfk418/Omni-RRM",
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        found = {sp: sorted(os.path.join(root, sp, f) for f in os.listdir(os.path.join(root, sp))
                            if f.endswith(".jsonl"))
                 for sp in SPLITS if os.path.isdir(os.path.join(root, sp))}
        found = {sp: files for sp, files in found.items() if files}
        if not found:
            top = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))
            if not top:
                raise FileNotFoundError(f"no *.jsonl in {root} or its {'/'.join(SPLITS)} folders\n"
                                        + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
            found = {"train": top}
        return {sp: self._generate_examples(files, root) for sp, files in found.items()}

    def _generate_examples(self, files, root):
        cfg = self.builder_config
        opts = P.RowOptions(root, cfg.media, cfg.use_audio_in_video, tuple(tuple(r) for r in cfg.path_rewrites))
        workers = (os.cpu_count() or 1) if cfg.num_workers is None else cfg.num_workers
        rows, reasons = 0, collections.Counter()
        for item, (data, _, bad) in P.map_rows(P.iter_rows(files, P.source_names(files)), opts, workers):
            rows += 1
            if data is None:
                reasons[bad["reason"]] += 1
                log.warning("quarantined %s:%d (%s): %s", bad["source"], bad["line"], bad["reason"], bad["detail"])
                continue
            yield f"{item[0]}:{item[1]}", {"record": data}
        bad_rows = sum(reasons.values())
        if rows and bad_rows / rows > cfg.max_bad_ratio:
            raise P.PrepError(f"{bad_rows} of {rows} rows quarantined ({bad_rows / rows:.1%}) > max_bad_ratio "
                              f"{cfg.max_bad_ratio:.1%}: {dict(reasons.most_common())}")
