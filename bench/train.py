"""Training benchmarks: tfrecord ingest rate (cold and warm) and wall time to train the shipped model.

    python bench/train.py [--data DIR] [--passes 3] [--no-evict] [--skip-train]

Cold: before the first pass every tfrecord is evicted from the page cache
(``posix_fadvise(DONTNEED)`` on those files only), and the pass runs in a
process that has not read them, so it measures disk + parsing. Warm: the
following passes, files in the page cache. Ingest is the full reader
(``train.data.iter_batches``: parallel reads, SequenceExample parsing, uint8
decoding, label vectors, status accounting), clips delivered per second.

Training: reruns ``fit`` with the hyper-parameters recorded in the shipped
bundle's metadata on the same data, and reports its wall time (reading,
training, validation, plots) next to the figures the bundle recorded.
Prints measured figures only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "audioset" / "audioset_v1_embeddings" / "bal_train"


def evict(files: list[Path]) -> bool:
    """Drops the files' pages from the page cache; False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def ingest_pass(data: Path) -> tuple[int, float]:
    from train import data as data_mod

    stats = data_mod.IngestStats()
    t0 = time.perf_counter()
    n = 0
    for batch in data_mod.iter_batches(data, stats):
        n += len(batch["x"])
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--passes", type=int, default=3, help="warm passes")
    ap.add_argument("--no-evict", dest="evict", action="store_false", help="do not evict the files first")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2
    from train import data as data_mod

    files = data_mod.list_files(args.data)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"data: {args.data} ({len(files)} files, {size_mb:.1f} MB), {os.cpu_count()} CPUs")
    evicted = evict(files) if args.evict else False
    import tensorflow as tf  # noqa: F401  (import time is not ingest time)

    n, dt = ingest_pass(args.data)
    print(f"ingest cold{' (page cache evicted)' if evicted else ' (page cache NOT evicted)'}: "
          f"{n} clips in {dt:.2f} s = {n / dt:,.0f} clips/s")
    warm = []
    for _ in range(args.passes):
        n, dt = ingest_pass(args.data)
        warm.append(n / dt)
        print(f"ingest warm: {n} clips in {dt:.2f} s = {n / dt:,.0f} clips/s")
    print(f"ingest warm best of {args.passes}: {max(warm):,.0f} clips/s")

    if args.skip_train:
        return 0
    from pipeline.classifier import load_classifier
    from train.fit import FitConfig, fit

    meta = load_classifier(runtime="litert").metadata
    hp = dict(meta["training"]["hyperparameters"])
    hp.pop("verbose", None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FitConfig(data=[str(args.data)], out=str(Path(tmp) / "run"), verbose=0,
                        **{k: v for k, v in hp.items() if k in FitConfig.__dataclass_fields__})
        t0 = time.perf_counter()
        run = fit(cfg)
        wall = time.perf_counter() - t0
        info = json.loads((run / "metrics.json").read_text())
    print(f"train shipped model ({meta['name']}@{meta['version']}: {cfg.model}, ensemble {cfg.ensemble}, "
          f"{cfg.epochs} epochs): wall {wall:.1f} s (data {info['seconds']['data']:.1f} s, "
          f"train {info['seconds']['train']:.1f} s)")
    print(f"  retrained validation mAP {info['metrics']['mAP']:.4f} (shipped: {meta['metrics']['mAP']:.4f}), "
          f"top-1 {info['metrics']['top1_accuracy']:.4f} (shipped: {meta['metrics']['top1_accuracy']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
