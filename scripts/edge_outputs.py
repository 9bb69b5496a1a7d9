"""What the edge profile makes of a set of inputs, as one JSON file to compare
across machines (``scripts/arm64-check`` runs it on x86-64 and on arm64).

    python scripts/edge_outputs.py --vggish V.tflite --pca P.npz --replay DIR \\
        --wav a.wav [--wav b.wav ...] --out outputs.json [--runtime litert]

For each WAV: the uint8 embeddings, and the caption events of the daemon's
chain (``daemon.models`` + ``daemon.chain``, 0.1 s blocks, stamps from 1e9 s);
for the replay directory: the chain's events. Then the daemon itself, as a
command (``python -m daemon --source … --sink stdout --pace fast``), on each
WAV and on the replay directory: its events with times relative to the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _event_row(o) -> list:
    return [o.type, o.label, round(o.start, 3), None if o.end is None else round(o.end, 3)]


def _chain_outputs(args: argparse.Namespace) -> dict:
    import numpy as np
    import soundfile

    from daemon.chain import CaptionChain
    from daemon.config import ModelConfig
    from daemon.models import build_models, build_tracker
    from daemon.sources import AudioBlock, EmbeddingBlock
    from pipeline.audioset import iter_clips, list_tfrecords
    from pipeline.events import CaptionEvent

    models = build_models(ModelConfig(vggish=args.vggish, pca=args.pca, classifier="", runtime=args.runtime))
    out: dict = {}
    for wav in args.wav:
        x, rate = soundfile.read(wav, dtype="float32", always_2d=True)
        chain = CaptionChain(models.classifier, build_tracker(models), models.make_embedder)
        outs, step = [], max(1, rate // 10)
        for i in range(0, x.shape[0], step):
            outs += chain.feed(AudioBlock(x[i : i + step], rate, 1e9 + i / rate, 0.0, 1))
        outs += chain.end_stream()
        out[Path(wav).name] = {
            "embeddings": models.make_embedder(rate).embed(x).tolist(),
            "events": [_event_row(o) for o in outs if isinstance(o, CaptionEvent)],
        }
    chain = CaptionChain(models.classifier, build_tracker(models), models.make_embedder)
    outs, t = [], 1e9
    for clip in iter_clips(list_tfrecords(args.replay)):
        emb = np.asarray(clip.embeddings, np.uint8)
        outs += chain.feed(EmbeddingBlock(emb, t, 0.0, 2))
        t += 0.96 * emb.shape[0]
    outs += chain.end_stream()
    out["replay"] = {"embeddings": [], "events": [_event_row(o) for o in outs if isinstance(o, CaptionEvent)]}
    return out


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _daemon_events(args: argparse.Namespace, source: str) -> dict:
    """The daemon command's caption events: (type, label, score, start and end
    relative to the first event's start), and its stderr lines."""
    cmd = [sys.executable, "-m", "daemon", "--source", source, "--sink", "stdout", "--pace", "fast",
           "--exit-at-end", "--runtime", args.runtime, "--vggish", args.vggish, "--pca", args.pca]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    t0 = _stamp(events[0]["start"]) if events else 0.0
    rows = [[e["type"], e["label"], e["score"], round(_stamp(e["start"]) - t0, 3),
             None if e["end"] is None else round(_stamp(e["end"]) - t0, 3)] for e in events]
    return {"events": rows, "stderr": proc.stderr.splitlines()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vggish", required=True)
    parser.add_argument("--pca", required=True)
    parser.add_argument("--runtime", default="litert")
    parser.add_argument("--replay", required=True, help="a directory of AudioSet tfrecords")
    parser.add_argument("--wav", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import platform

    result = {"machine": platform.machine(), "chain": _chain_outputs(args),
              "daemon": {Path(w).name: _daemon_events(args, f"file:{w}") for w in args.wav}}
    result["daemon"]["replay"] = _daemon_events(args, f"replay:{args.replay}")
    Path(args.out).write_text(json.dumps(result))
    print(f"{args.out}: {platform.machine()}, {len(args.wav)} recordings and a replay")


if __name__ == "__main__":
    main()
