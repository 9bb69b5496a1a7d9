"""Small tfrecords and label files the train tests write.

Clips are made by :func:`make_clips`: seeded noise around mid-grey with a
class-specific band of high values, so a classifier can learn them in an epoch
or two. Label files describe a tiny ontology with the four real mids, one
child each and two unrelated labels, so nothing here needs ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Label vocabulary of the small fixtures: (index, mid, name).
SMALL_LABELS = (
    (0, "/m/09x0r", "Speech"),
    (1, "/m/05zppz", "Male speech, man speaking"),
    (2, "/m/0jbk", "Animal"),
    (3, "/m/0bt9lr", "Dog"),
    (4, "/m/04rlf", "Music"),
    (5, "/m/0342h", "Guitar"),
    (6, "/m/07yv9", "Vehicle"),
    (7, "/m/0k4j", "Car"),
    (8, "/m/028v0c", "Silence"),
    (9, "/m/096m7z", "Noise"),
)
CLASS_LABELS = {"Speech": (0, 1), "Animal": (2, 3), "Music": (4, 5), "Vehicle": (6, 7)}


def write_label_files(folder: Path) -> tuple[Path, Path]:
    """Writes class_labels_indices.csv and ontology.json for SMALL_LABELS."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "class_labels_indices.csv"
    lines = ["index,mid,display_name"] + [f'{i},{m},"{n}"' for i, m, n in SMALL_LABELS]
    csv_path.write_text("\n".join(lines) + "\n")
    children = {"/m/09x0r": ["/m/05zppz"], "/m/0jbk": ["/m/0bt9lr", "/m/0not_a_label"],
                "/m/04rlf": ["/m/0342h"], "/m/07yv9": ["/m/0k4j"], "/m/0k4j": ["/m/07yv9"]}  # a cycle, on purpose
    entries = [{"id": m, "name": n, "child_ids": children.get(m, [])} for _, m, n in SMALL_LABELS]
    entries.append({"id": "/m/0not_a_label", "name": "Ontology-only node", "child_ids": []})
    onto = folder / "ontology.json"
    onto.write_text(json.dumps(entries))
    return csv_path, onto


def make_clips(n: int, seed: int = 0, frames: int = 10) -> list[dict]:
    """n clips: dicts with video_id, start, labels (indices), emb uint8 [frames, 128]."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        cls = int(rng.integers(0, 5))  # 4 = none of the four
        emb = rng.normal(128, 20, (frames, 128)).clip(0, 255).astype(np.uint8)
        if cls < 4:
            labels = [CLASS_LABELS[list(CLASS_LABELS)[cls]][int(rng.integers(0, 2))]]
            emb[:, cls * 16 : cls * 16 + 16] = rng.normal(230, 10, (frames, 16)).clip(0, 255).astype(np.uint8)
        else:
            labels = [int(rng.integers(8, 10))]
        clips.append({"video_id": f"vid{seed}_{i // 2:04d}", "start": float(10 * (i % 2)), "labels": labels, "emb": emb})
    return clips


def sequence_example(clip: dict) -> bytes:
    import tensorflow as tf

    ex = tf.train.SequenceExample()
    ex.context.feature["video_id"].bytes_list.value.append(clip["video_id"].encode())
    ex.context.feature["start_time_seconds"].float_list.value.append(clip["start"])
    ex.context.feature["end_time_seconds"].float_list.value.append(clip["start"] + 10.0)
    ex.context.feature["labels"].int64_list.value.extend(clip["labels"])
    fl = ex.feature_lists.feature_list["audio_embedding"]
    for row in clip["emb"]:
        fl.feature.add().bytes_list.value.append(row.tobytes() if isinstance(row, np.ndarray) else row)
    return ex.SerializeToString()


def write_tfrecord(path: Path, payloads: list[bytes]) -> Path:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for p in payloads:
            w.write(p)
    return path


def write_clean_dir(folder: Path, n_files: int, per_file: int, seed: int = 0) -> Path:
    clips = make_clips(n_files * per_file, seed=seed)
    for f in range(n_files):
        write_tfrecord(folder / f"{f:03d}.tfrecord", [sequence_example(c) for c in clips[f * per_file : (f + 1) * per_file]])
    return folder


def write_noisy_dir(folder: Path, n_files: int = 8, per_file: int = 50, seed: int = 3, flip: float = 0.3) -> Path:
    """A hard dataset: a weak class band in loud noise, and ``flip`` of the labels redrawn at random.

    A wide network with a high learning rate and no dropout learns the band in
    its first epoch and then fits the wrong labels: validation mAP falls after
    the first epoch (for tests of best-epoch selection).
    """
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_files * per_file):
        cls = int(rng.integers(0, 5))
        emb = rng.normal(128, 30, (10, 128)).clip(0, 255).astype(np.uint8)
        if cls < 4:
            emb[:, cls * 16 : cls * 16 + 16] = rng.normal(150, 30, (10, 16)).clip(0, 255).astype(np.uint8)
        label = cls if rng.random() > flip else int(rng.integers(0, 5))
        labels = [CLASS_LABELS[list(CLASS_LABELS)[label]][0]] if label < 4 else [8]
        clips.append({"video_id": f"noisy{seed}_{i // 2:04d}", "start": float(10 * (i % 2)), "labels": labels, "emb": emb})
    for f in range(n_files):
        write_tfrecord(folder / f"{f:03d}.tfrecord", [sequence_example(c) for c in clips[f * per_file : (f + 1) * per_file]])
    return folder
