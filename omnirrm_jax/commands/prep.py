"""`omnirrm prep`: ms-swift JSONL + media -> ArrayRecord shards (`data_prep.prep`), resumable."""

from __future__ import annotations

import argparse
import os


def _rewrite(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError("--rewrite takes OLD=NEW")
    old, new = text.split("=", 1)
    return old, new


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prep", help="ms-swift JSONL + media -> ArrayRecord shards: `omnirrm prep --help`",
                       description="ms-swift JSONL + media -> ArrayRecord shards")
    p.add_argument("--jsonl", nargs="+", required=True, help="input JSONL files (one split, read in this order)")
    p.add_argument("--media-root", required=True, help="folder all media paths must resolve into")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="media processes (0: in-process)")
    p.add_argument("--records-per-shard", type=int, default=1000)
    p.add_argument("--media", choices=["sft", "grpo", "env"], default="sft",
                   help="reference SFT / GRPO media settings, or ms-swift env vars (MAX_PIXELS, FPS, ...)")
    p.add_argument("--use-audio-in-video", action="store_true", help="also extract each video's audio track")
    p.add_argument("--rewrite", action="append", default=[], metavar="OLD=NEW", type=_rewrite,
                   help="replace a path prefix before resolving, e.g. /data/= (repeatable; first match wins)")
    p.add_argument("--max-bad-ratio", type=float, default=0.1, help="stop when a larger share of rows is quarantined")
    return p


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from data_prep.prep import prep
    from omnirrm_jax.data import media as M

    cfg = {"sft": M.MediaConfig, "grpo": M.MediaConfig.grpo, "env": M.MediaConfig.from_env}[args.media]()
    s = prep(args.jsonl, args.media_root, args.out, media_cfg=cfg, split=args.split, num_workers=args.workers,
             records_per_shard=args.records_per_shard, max_bad_ratio=args.max_bad_ratio,
             use_audio_in_video=args.use_audio_in_video, path_rewrites=[list(r) for r in args.rewrite])
    print(json.dumps(s, indent=1))
    cut = s.get("notes_by_reason", {}).get("audio_truncated")
    if cut:  # kept, as the reference kept them, but the model hears only the start
        print(f"omnirrm prep: note: {cut} audio clip(s) longer than {cfg.audio_max_seconds} s were cut to their first "
              f"{cfg.audio_max_seconds} s; see {os.path.join(args.out, 'notes.jsonl')}", file=sys.stderr)
    return 0
