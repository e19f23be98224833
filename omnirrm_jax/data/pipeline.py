"""The Grain input pipeline: prepared records -> bucketed, padded host batches -> global arrays on the mesh.

    source (ArrayRecord shards | TFDS data source) -> attach global index -> seeded shuffle (reshuffled per epoch)
      -> repeat -> this process's block of every global batch -> BuildExample (decode, prompt, ids, positions, patches)
      -> BucketBatch (worker: length-grouping window, media budget, collate; counts skips)
      -> mp_prefetch (worker_count spawn processes) -> Finalize (main: tower index tables, skip-ratio check)
      -> thread prefetch (_PrefetchIterator) -> host batch -> `to_global_arrays`

Why this shape: everything per record (decode, tokenize, patchify) and the collation run in Grain workers and never
use JAX (grain 0.2.18 itself imports jax on `import grain`; no backend is ever initialised there); pixels are collated
straight into shared memory, so padding is never copied between processes. Only `Finalize` (the towers' host index
tables, taken from the model code so they cannot drift) and `to_global_arrays` touch model code. Each step is a
small frozen dataclass or iterator whose state is plain JSON, so `iterator.get_state()` (or Orbax via
`grain.checkpoint.CheckpointSave`) saves the exact position, and a fresh iterator restored from it yields the very
batches an uninterrupted run would (for the same worker count; batches depend on the worker count).

Shapes are bounded: a batch takes the smallest `seq_buckets` entry that holds its longest example and the first
`media_buckets` entry (image patches, video patches, audio chunks, audio tokens) that holds its media, so a run
emits at most len(seq_buckets) * len(media_buckets) shapes (`batch_shapes`). Every batch carries all media keys
(fully padded when it has none), so the pytree structure is fixed per mode.

Skips: a record that fails (undecodable, placeholder/media mismatch, over max_length - ms-swift's default
truncation_strategy "delete" drops such rows too -, media over the largest bucket, missing response/gold, an SFT
judgement over `max_target_length`) is
dropped and counted by reason; the counts are part of the iterator state, and past `max_skip_ratio` of all records
read so far (after `min_records_for_skip_check` records) the iterator raises `SkipRatioError` naming the reasons, as
it does after 1000 skipped records in a row unless max_skip_ratio is 1.

Several processes: every process shuffles the whole source with the same seed and reads only its block of each
global batch (`_BlockShard`: rows [p*b, (p+1)*b) of every B = P*b consecutive elements), so it reads 1/P of the data
and, as long as no record is skipped and no batch closes early on the media budget (group_window 1), the global
batch is row for row the one a single process would build: a 2-host run trains on the same batches as a 1-host one.

Packing (SFT, `pack=True`; `data.packing`): the window becomes a buffer of `pack_buffer` examples (seeded-shuffled
per window), packed first-fit into rows of max(seq_buckets) tokens, B rows per batch within the largest media
bucket; rows carry `segment_ids` and per-segment positions, so each example attends only to itself and keeps its own
TMRoPE ids. A batch takes the smallest seq bucket that holds its fullest row and the first media bucket that holds
its media, so the shapes are those of `batch_shapes`. Over-length and over-media examples are skipped before
packing with the usual reasons. The last batch of a window may have unfilled rows (a larger buffer wastes less);
the loss is the same token mean over the batch's targets as unpacked (`data.packing`). Without `pack` nothing
changes. The SFT step then scores every position (no `max_target_length` window: targets sit mid-row), and
a packed batch holds a varying number of examples, so an SFT config with pack must size the run by `run.max_steps`
(`training.config.SFTConfig` refuses run.num_epochs alone).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np

from omnirrm_jax.data import examples as E
from omnirrm_jax.data import packing as P
from omnirrm_jax.data import records as R
from omnirrm_jax.data import shards
from omnirrm_jax.data.tokenizer import Tokenizer
from omnirrm_jax.errors import UserError
from omnirrm_jax.models.config import ThinkerConfig

# (image patches, video patches, audio chunks, audio tokens) per batch; patches are multiples of merge^2 = 4.
DEFAULT_MEDIA_BUCKETS = ((1024, 1024, 8, 200), (8192, 16384, 64, 1600))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does; one frozen object, logged with the run.

    batch_size is global (each of process_count processes makes batch_size / process_count rows).
    max_length None means max(seq_buckets). group_window > 1 reads that many batches' worth of examples, sorts
    them by length and emits the batches in a seeded random order (less padding, ms-swift `group_by_length`-like).
    prompt_style: "reference" (the reference judge prompts) and "compact" (demo data) both mean "the messages as
    stored in the record" - prep keeps the user prompt verbatim; the value is recorded for provenance.
    drop_remainder drops the short batches of the last window of a finite run.
    max_target_length (SFT): judgements (with their end token) longer than this are skipped as "target_too_long",
    and the SFT step scores only each row's last max_target_length positions, so its output head (152k columns)
    runs on those alone instead of on the whole prompt. None: the whole row.
    pack (SFT only): several examples per row with segment ids, first-fit from a buffer of pack_buffer examples
    (module docstring, `data.packing`), at most pack_max_segments examples per row (a static shape of GPU attention).
    """

    mode: str = "sft"
    batch_size: int = 8
    seq_buckets: tuple[int, ...] = (256, 512, 1024, 2048, 3072)
    max_length: int | None = None
    max_target_length: int | None = None
    media_buckets: tuple[tuple[int, int, int, int], ...] = DEFAULT_MEDIA_BUCKETS
    shuffle_seed: int | None = 0
    num_epochs: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 1
    host_prefetch: int = 2
    group_window: int = 1
    max_skip_ratio: float = 0.05
    min_records_for_skip_check: int = 200
    prompt_style: str = "reference"
    system: str | None = None
    drop_remainder: bool = True
    pack: bool = False
    pack_buffer: int = 256
    pack_max_segments: int = P.MAX_SEGMENTS

    def __post_init__(self):
        problems = []
        if self.mode not in ("sft", "grpo"):
            problems.append(f"mode {self.mode!r} is not 'sft' or 'grpo'")
        if self.prompt_style not in ("reference", "compact"):
            problems.append(f"prompt_style {self.prompt_style!r} is not 'reference' or 'compact'")
        if list(self.seq_buckets) != sorted(set(self.seq_buckets)) or not self.seq_buckets or self.seq_buckets[0] < 1:
            problems.append(f"seq_buckets {self.seq_buckets} must be positive and strictly increasing")
        if self.max_length is not None and not 0 < self.max_length <= max(self.seq_buckets, default=0):
            problems.append(f"max_length {self.max_length} must be in (0, max(seq_buckets)]")
        mb = [tuple(b) for b in self.media_buckets]
        if not mb or any(len(b) != 4 or min(b) < 1 for b in mb) or any(b[0] % 4 or b[1] % 4 for b in mb) \
                or any(any(x > y for x, y in zip(a, b)) for a, b in zip(mb, mb[1:])):
            problems.append(f"media_buckets {self.media_buckets} must be (image patches, video patches, audio chunks, "
                            "audio tokens) >= 1, patches multiples of 4, each bucket >= the previous one")
        if self.max_target_length is not None and not 0 < self.max_target_length <= self.length_limit:
            problems.append(f"max_target_length {self.max_target_length} must be in (0, {self.length_limit}]")
        if self.batch_size < 1 or self.group_window < 1 or self.worker_count < 0 or self.read_threads < 1:
            problems.append("batch_size, group_window, read_threads must be >= 1 and worker_count >= 0")
        if self.pack and self.mode != "sft":
            problems.append(f"pack is for SFT batches, not mode {self.mode!r}")
        if self.pack_buffer < 1 or self.pack_max_segments < 1:
            problems.append(f"pack_buffer {self.pack_buffer} and pack_max_segments {self.pack_max_segments} must be "
                            ">= 1")
        if not 0 <= self.max_skip_ratio <= 1:
            problems.append(f"max_skip_ratio {self.max_skip_ratio} is not in [0, 1]")
        if problems:
            raise ValueError("PipelineConfig: " + "; ".join(problems))

    @property
    def length_limit(self) -> int:
        return self.max_length or max(self.seq_buckets, default=0)

    @property
    def max_media(self) -> tuple[int, int, int, int]:
        return tuple(self.media_buckets[-1])


class SkipRatioError(UserError, RuntimeError):
    """Too many records were skipped: the data or the settings are wrong, and training on the rest would mislead."""


def _check_ratio(seen: int, skipped: dict, first: dict, cfg: PipelineConfig) -> None:
    n = sum(skipped.values())
    if seen >= cfg.min_records_for_skip_check and n > cfg.max_skip_ratio * seen:
        top = sorted(skipped.items(), key=lambda kv: -kv[1])
        why = "; ".join(f"{k}={v} (e.g. {first.get(k, '?')})" for k, v in top)
        raise SkipRatioError(f"{n} of {seen} records skipped ({n / seen:.1%}) > max_skip_ratio "
                             f"{cfg.max_skip_ratio:.1%}: {why}")


# ----------------------------------------------------------------------------------------------------------- workers

@dataclasses.dataclass(frozen=True)
class _AttachIndex(grain.transforms.MapWithIndex):
    """Keeps each record's position in the source (before sharding and shuffling) as its example_index; later
    epochs reach the source with index + epoch * size, hence the modulo."""

    size: int

    def map_with_index(self, index: int, element):
        return index % self.size, element


@dataclasses.dataclass(frozen=True)
class BuildExample(grain.transforms.Map):
    """Record bytes (or a TFDS {"record": bytes} dict) -> example dict, or {"skip": reason, ...}; never raises."""

    tokenizer: Tokenizer
    thinker: ThinkerConfig
    cfg: PipelineConfig

    def map(self, item):
        index, raw = item
        try:
            rec = R.decode_record(raw["record"] if isinstance(raw, dict) else raw)
            return E.build_example(rec, index, self.tokenizer, self.thinker, mode=self.cfg.mode,
                                   max_length=self.cfg.length_limit, max_media=self.cfg.max_media,
                                   system=self.cfg.system, max_target_length=self.cfg.max_target_length)
        except E.Skip as s:
            reason, detail = s.reason, s.detail
        except R.RecordError as e:
            reason, detail = "decode_error", str(e)
        except Exception as e:  # noqa: BLE001 - a bad record must not kill a week-long run; the ratio check does
            reason, detail = "internal_error", f"{type(e).__name__}: {e}"
        return {"skip": reason, "detail": f"record {index}: {detail}"[:300]}


class _BucketBatchDataset(grain.IterDataset):
    def __init__(self, parent, cfg: PipelineConfig, local_batch: int, patch_dim: int, pad_id: int):
        super().__init__(parent)
        self._args, self._shm = (cfg, local_batch, patch_dim, pad_id), False

    def enable_shared_memory_output(self) -> None:
        """Called by mp_prefetch: pixels are then collated straight into shared memory (one copy, padding free)."""
        self._shm = True

    def __iter__(self):
        return _BucketBatchIterator(self._parent.__iter__(), *self._args, shm=self._shm)


class _BucketBatchIterator(grain.DatasetIterator):
    """Window of examples -> batches under the bucket limits -> collated batches (+ the window's skip counts).

    State = (parent state at the window's start, window number, batches of it already returned): a restore
    re-reads that one window, which is deterministic, and skips what was returned, so no examples live in the state.
    The window's skip counts ride on its first returned batch, so they are counted once across a restore.
    """

    def __init__(self, parent, cfg: PipelineConfig, local_batch: int, patch_dim: int, pad_id: int, shm: bool = False):
        super().__init__(parent)
        self._cfg, self._B, self._patch_dim, self._pad_id = cfg, local_batch, patch_dim, pad_id
        self._alloc = np.zeros
        if shm:  # Grain's own shared-memory array type (fresh POSIX shared memory reads as zeros)
            from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
            self._alloc = SharedMemoryArray
        self._start, self._window, self._emitted = parent.get_state(), 0, 0
        self._groups: list | None = None
        self._next_start = self._skips = None

    def _read_window(self) -> None:
        cfg, B = self._cfg, self._B
        exs, seen, skips, first = [], 0, collections.Counter(), {}
        want = cfg.pack_buffer if cfg.pack else B * cfg.group_window
        while len(exs) < want:
            try:
                x = next(self._parent)
            except StopIteration:
                break
            seen += 1
            if "skip" in x:
                skips[x["skip"]] += 1
                first.setdefault(x["skip"], x["detail"])
                # No ratio check here: max_skip_ratio is run-wide (`_FinalizeIterator`), and one window's ratio is
                # noise (3% bad rows put some 256-example windows past 5%). Only a stream of nothing but skips,
                # which would never fill a window, stops here - unless max_skip_ratio 1 allows skipping everything
                # (held-out eval skips the other kind's records).
                if not exs and cfg.max_skip_ratio < 1 and seen >= max(cfg.min_records_for_skip_check, 1000):
                    raise SkipRatioError(f"the last {seen} records were all skipped: {dict(skips)}; e.g. {first}")
            else:
                exs.append(x)
        exhausted = len(exs) < want
        if cfg.pack:
            groups = self._packed_groups(exs, exhausted)
        else:
            groups = self._groups_of(exs, exhausted)
        if not groups and seen:  # nothing to batch (all skipped or dropped): still report the counts
            groups = [None]
        self._groups, self._next_start = groups, self._parent.get_state()
        self._skips = {"seen": seen, "skipped": dict(skips), "first": first}

    def _packed_groups(self, exs: list, exhausted: bool) -> list:
        """Batches of rows of examples (`packing.first_fit` over the seeded-shuffled buffer)."""
        cfg, B = self._cfg, self._B
        if cfg.shuffle_seed is not None and len(exs) > 1:
            rng = np.random.default_rng([cfg.shuffle_seed, self._window])
            exs = [exs[i] for i in rng.permutation(len(exs))]
        batches = P.first_fit([e["cost"][0] for e in exs], [e["cost"][1:] for e in exs],
                              row_len=max(cfg.seq_buckets), batch_size=B, max_media=cfg.max_media,
                              max_segments=cfg.pack_max_segments)
        groups = [[[exs[i] for i in row] for row in rows] for rows in batches]
        if exhausted and cfg.drop_remainder:
            groups = [g for g in groups if len(g) == B]
        return groups

    def _groups_of(self, exs: list, exhausted: bool) -> list:
        """Batches of examples: greedy in (length-sorted, with group_window > 1) order under the media budget."""
        cfg, B = self._cfg, self._B
        if cfg.group_window > 1:
            exs.sort(key=lambda e: e["cost"][0])
        groups, cur, used = [], [], np.zeros(4, np.int64)
        for ex in exs:  # greedy: a batch closes when full or when the next example would break the media budget
            cost = np.asarray(ex["cost"][1:])
            if cur and (len(cur) == B or (used + cost > cfg.max_media).any()):
                groups.append(cur)
                cur, used = [], np.zeros(4, np.int64)
            cur.append(ex)
            used += cost
        if cur:
            groups.append(cur)
        if exhausted and cfg.drop_remainder:
            groups = [g for g in groups if len(g) == B]
        if cfg.group_window > 1 and len(groups) > 1:
            rng = np.random.default_rng([cfg.shuffle_seed or 0, self._window])
            groups = [groups[i] for i in rng.permutation(len(groups))]
        return groups

    def __next__(self):
        while True:
            if self._groups is None:
                self._read_window()
                if self._skips["seen"] == 0:
                    raise StopIteration
            if self._emitted < len(self._groups):
                break
            self._start, self._window, self._emitted, self._groups = self._next_start, self._window + 1, 0, None
        group = self._groups[self._emitted]
        self._emitted += 1
        if group is None:
            return {"_stats": self._skips}
        cfg = self._cfg
        rows = group if cfg.pack else [[e] for e in group]  # a packed batch's rows, or one example per row
        seq = cfg.seq_buckets[E.bucket_for(max(sum(e["cost"][0] for e in row) for row in rows), cfg.seq_buckets)]
        media = cfg.media_buckets[E.media_bucket_for(np.sum([e["cost"][1:] for row in rows for e in row], 0),
                                                     cfg.media_buckets)]
        if cfg.pack:
            batch = P.collate_packed(group, batch_size=self._B, seq_len=seq, media=media, pad_id=self._pad_id,
                                     patch_dim=self._patch_dim, alloc=self._alloc,
                                     max_segments=cfg.pack_max_segments)
        else:
            batch = E.collate(group, batch_size=self._B, seq_len=seq, media=media, pad_id=self._pad_id,
                              mode=cfg.mode, patch_dim=self._patch_dim, alloc=self._alloc)
        empty = {"seen": 0, "skipped": {}, "first": {}}
        batch["_stats"] = self._skips if self._emitted == 1 else empty
        return batch

    def get_state(self):
        if self._groups is not None and self._emitted >= len(self._groups):
            return {"window_start": copy.deepcopy(self._next_start), "window": self._window + 1, "emitted": 0}
        return {"window_start": copy.deepcopy(self._start), "window": self._window, "emitted": self._emitted}

    def set_state(self, state):
        self._parent.set_state(state["window_start"])
        self._start, self._window, self._emitted = copy.deepcopy(state["window_start"]), state["window"], \
            state["emitted"]
        self._groups = None


# ------------------------------------------------------------------------------------------------------ main process

class _FinalizeDataset(grain.IterDataset):
    def __init__(self, parent, cfg: PipelineConfig, thinker: ThinkerConfig):
        super().__init__(parent)
        self._cfg, self._thinker = cfg, thinker

    def __iter__(self):
        return _FinalizeIterator(self._parent.__iter__(), self._cfg, self._thinker)


class _FinalizeIterator(grain.DatasetIterator):
    """Adds the towers' index tables, sums the workers' skip counts and enforces max_skip_ratio."""

    def __init__(self, parent, cfg: PipelineConfig, thinker: ThinkerConfig):
        super().__init__(parent)
        self._cfg, self._thinker = cfg, thinker
        self._counts = {"seen": 0, "skipped": {}, "first": {}}

    def __next__(self):
        pre = next(self._parent)
        while "input_ids" not in pre:  # a counts-only element (a window without batches)
            self._add(pre["_stats"])
            pre = next(self._parent)
        self._add(pre.pop("_stats"))
        return E.finalize(pre, self._thinker)

    def _add(self, st: dict) -> None:
        c = self._counts
        c["seen"] += st["seen"]
        for k, v in st["skipped"].items():
            c["skipped"][k] = c["skipped"].get(k, 0) + v
        for k, v in st["first"].items():
            c["first"].setdefault(k, v)
        _check_ratio(c["seen"], c["skipped"], c["first"], self._cfg)

    def get_state(self):
        return {"parent": self._parent.get_state(), "counts": copy.deepcopy(self._counts)}  # a snapshot

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        c = state["counts"]
        self._counts = {"seen": int(c["seen"]), "skipped": dict(c["skipped"]), "first": dict(c["first"])}


class _PrefetchDataset(grain.IterDataset):
    def __init__(self, parent, buffer_size: int):
        super().__init__(parent)
        self._size = buffer_size

    def __iter__(self):
        return _PrefetchIterator(self._parent.__iter__(), self._size)


class _PrefetchIterator(grain.experimental.ThreadPrefetchDatasetIterator):
    """Grain's thread prefetch, whose state after the end is its parent's: Grain keeps the state of the last batch
    it handed out, which misses the skip counts of windows without a batch read by the final next(). At the end
    the prefetch thread has stopped, so the parent's state is exact."""

    def __init__(self, parent, buffer_size: int):
        super().__init__(parent, buffer_size)
        self._finalize, self._end_state = parent, None

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            self._end_state = copy.deepcopy(self._finalize.get_state())
            raise

    def get_state(self):
        return super().get_state() if self._end_state is None else copy.deepcopy(self._end_state)

    def set_state(self, state):
        self._end_state = None
        super().set_state(state)


class _BlockShard(grain.MapDataset):
    """Process p's rows of the (shuffled, repeated) stream: [p*b, (p+1)*b) of every block of B = P*b elements.

    Blocks rather than a stride [p::P] so that each process's k-th local batch is the k-th row block of the global
    batch a single process would build, which is where `to_global_arrays` places it on the mesh."""

    def __init__(self, parent: grain.MapDataset, local_batch: int, index: int, count: int):
        super().__init__(parent)
        if not 0 <= index < count:
            raise ValueError(f"process_index {index} is not in [0, process_count {count})")
        self._b, self._p, self._B = local_batch, index, local_batch * count
        full, rest = divmod(len(parent), self._B)
        self._length = full * self._b + min(self._b, max(0, rest - index * self._b))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        block, row = divmod(index, self._b)
        return self._parent[block * self._B + self._p * self._b + row]

    def __str__(self) -> str:
        return f"_BlockShard(process {self._p}, {self._b} of every {self._B})"


def skip_counts(state: dict) -> dict:
    """{"seen": records read, "skipped": {reason: n}, "first": {reason: first detail}} of an iterator state."""
    return state["counts"]


# ------------------------------------------------------------------------------------------------------------- API

def _source(source) -> Any:
    if isinstance(source, (str, Path)) or (isinstance(source, Sequence) and source
                                           and all(isinstance(p, (str, Path)) for p in source)):
        paths = [source] if isinstance(source, (str, Path)) else list(source)
        files = []
        for p in map(Path, paths):
            files += sorted(p.glob("*.array_record")) if p.is_dir() else [p]
        if not files:
            raise FileNotFoundError(f"no .array_record files in {paths}")
        return shards.open_shards(files)  # names a corrupt shard, which Riegeli's own error does not
    return source  # any random-access source: tfds.data_source(...), grain sources, a list of bytes


def make_dataset(source, tokenizer: Tokenizer, thinker: ThinkerConfig, cfg: PipelineConfig, *,
                 process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
    """The pipeline as a Grain IterDataset; `iter(ds)` gives a checkpointable iterator of host batches.

    Args:
      source: shard paths or folders of `*.array_record` (omnirrm prep output; a folder takes all its shards), or a
        random-access source of record bytes / {"record": bytes} (e.g. `tfds.data_source("omni_preference/sft")`).
      tokenizer, thinker: the tokenizer and a ThinkerConfig whose special ids match it.
      cfg: PipelineConfig. process_index / process_count: default to jax.process_index() / process_count().
    Returns:
      IterDataset of dicts of numpy arrays (module docstring; `batch_shapes` lists every possible shape).
    """
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by process_count {process_count}")
    E._check_ids(tokenizer, thinker)
    src = _source(source)
    ds = grain.MapDataset.source(src).map_with_index(_AttachIndex(len(src)))
    if cfg.shuffle_seed is not None:
        ds = ds.shuffle(seed=cfg.shuffle_seed)
    if cfg.num_epochs != 1:
        ds = ds.repeat(cfg.num_epochs)
    if process_count > 1:
        ds = _BlockShard(ds, cfg.batch_size // process_count, process_index, process_count)
    ds = ds.map(BuildExample(tokenizer, thinker, cfg))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=4 * cfg.batch_size))
    it = _BucketBatchDataset(it, cfg, cfg.batch_size // process_count, thinker.vision.patch_dim,
                             tokenizer.special_ids["pad"])
    if cfg.worker_count > 0:
        from absl import flags  # grain reads absl flags when it starts workers; a non-absl program never parses them
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                         per_worker_buffer_size=cfg.worker_buffer_size))
    it = _FinalizeDataset(it, cfg, thinker)
    if cfg.host_prefetch > 0:
        it = _PrefetchDataset(it, cfg.host_prefetch)
    return it


def batch_examples(examples: Sequence[dict], cfg: PipelineConfig, *, patch_dim: int, pad_id: int):
    """Already built examples (`examples.build_example` outputs), in the given order, through the pipeline's own
    batching step alone: the windows, seq buckets, media budget and packing of `make_dataset` (`cfg.pack` picks
    which), without the source shuffle, the workers and `finalize`. Yields the collated host batches (one
    process's view, `cfg.batch_size` rows). Why: a benchmark that compares bucketed with packed batches must batch
    exactly as training does (`omnirrm bench pack`)."""
    it = grain.MapDataset.source(list(examples)).to_iter_dataset()
    for batch in _BucketBatchDataset(it, cfg, cfg.batch_size, patch_dim, pad_id):
        if "input_ids" in batch:  # not a counts-only element (built examples are never skipped here)
            batch.pop("_stats")
            yield batch


def batch_shapes(cfg: PipelineConfig, thinker: ThinkerConfig, local_batch: int | None = None) -> list[dict]:
    """Every host-batch shape the pipeline can emit (len(seq_buckets) * len(media_buckets) of them), as pytrees of
    (shape, dtype) - built by running the collator on empty batches, so they cannot drift from the real ones."""
    out, B = [], local_batch or cfg.batch_size
    for S in cfg.seq_buckets:
        for media in cfg.media_buckets:
            b = _empty_batch(cfg, thinker, B, S, media, pad_id=0)
            out.append(_tree_map(lambda x: (tuple(x.shape), str(x.dtype)), b))
    return out


def _empty_batch(cfg: PipelineConfig, thinker: ThinkerConfig, B: int, S: int, media, pad_id: int) -> dict:
    """The collator and `finalize` run on no example: a (B, S) batch of padding rows with `media` buckets."""
    if cfg.pack:
        pre = P.collate_packed([], batch_size=B, seq_len=S, media=media, pad_id=pad_id,
                               patch_dim=thinker.vision.patch_dim, max_segments=cfg.pack_max_segments)
    else:
        pre = E.collate([], batch_size=B, seq_len=S, media=media, pad_id=pad_id, mode=cfg.mode,
                        patch_dim=thinker.vision.patch_dim)
    return E.finalize(pre, thinker)


def padding_batch(cfg: PipelineConfig, thinker: ThinkerConfig, pad_id: int) -> dict:
    """This process's host batch (batch_size / process_count rows) of the smallest shape, every row padding
    (`valid` False). Why: on a finite dataset the processes can get different numbers of batches, and every
    collective step needs all of them; a process whose share ran out feeds this while the others finish theirs."""
    import jax

    return _empty_batch(cfg, thinker, cfg.batch_size // jax.process_count(), min(cfg.seq_buckets),
                        min(cfg.media_buckets), pad_id)


def _tree_map(fn, tree):
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def to_global_arrays(host_batch: dict, mesh, pad_id: int = 0) -> dict:
    """Host batch -> dict of global jax.Arrays on `mesh`.

    Batch-major arrays (leading B, or position_ids' second axis) are split over the data axes with
    `parallel.sharding.batch_sharding`. The media arrays (pixel_values, pixel_values_videos, audio_chunks and their
    aux tables) are concatenations over the batch that the thinker's scatter reads in global row order, so they
    are replicated: every device gets the whole batch's media (the towers' work is repeated per data shard; the
    text model, the bulk of the compute, stays data-parallel). With several processes the hosts first agree on
    one bucket (the largest; `pad_batch`), then all-gather and merge their media (`merge_media`), so the replicated
    arrays are identical everywhere. `pad_id` is the tokenizer's pad id, used only when re-padding across hosts.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from omnirrm_jax.parallel.sharding import batch_sharding

    if jax.process_count() > 1:
        host_batch = _agree_across_processes(host_batch, mesh, pad_id)
    replicated = NamedSharding(mesh, PartitionSpec())
    out = {}
    for k, v in host_batch.items():
        if k in E.MEDIA_KEYS:
            out[k] = _tree_map(lambda x: jax.make_array_from_process_local_data(replicated, x), v)
        else:
            sh = batch_sharding(mesh, v.ndim, batch_axis=1 if k == "position_ids" else 0)
            out[k] = jax.make_array_from_process_local_data(sh, v)
    return out


def _agree_across_processes(batch: dict, mesh, pad_id: int) -> dict:
    import jax
    from jax.experimental import multihost_utils

    from omnirrm_jax.parallel.sharding import batch_sharding

    sigs = multihost_utils.process_allgather(np.asarray(E.batch_signature(batch), np.int64))
    batch = E.pad_batch(batch, sigs.max(0), pad_id)
    media = {k: batch[k] for k in E.MEDIA_KEYS}
    gathered = multihost_utils.process_allgather(media)
    # Order the processes as their rows sit in the global batch.
    B = batch["input_ids"].shape[0]
    sh = batch_sharding(mesh, 1)
    starts = {}
    for d, idx in sh.devices_indices_map((B * jax.process_count(),)).items():
        starts[d.process_index] = min(starts.get(d.process_index, 1 << 62), idx[0].start or 0)
    order = sorted(starts, key=starts.get)
    parts = [_tree_map(lambda x, p=p: np.asarray(x[p]), gathered) for p in order]
    n_window = (batch["audio_chunks"].shape[-1]) // 2
    return {**batch, **E.merge_media(parts, n_window)}
