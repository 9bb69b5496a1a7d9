"""The four audiocap classes and how they map onto AudioSet's 527 labels.

Each class is an AudioSet ontology node, named by its mid. With the default
``"ontology"`` mapping a class covers its node and every descendant that is a
label of the release (``class_labels_indices.csv``); the paper's ``"direct"``
mapping covers only the node's own label. Pure Python and NumPy: the daemon
imports this without TensorFlow.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

CLASS_MIDS: dict[str, str] = {
    "Speech": "/m/09x0r",
    "Animal": "/m/0jbk",
    "Music": "/m/04rlf",
    "Vehicle": "/m/07yv9",
}
"""AudioSet mid of each class, keyed by the names of ``params.CLASS_NAMES``."""

MAPPINGS = ("ontology", "direct")
"""``ontology``: a class covers its ontology descendants; ``direct``: only its own label."""

LABELS_CSV_NAME = "class_labels_indices.csv"
ONTOLOGY_JSON_NAME = "ontology.json"

if tuple(CLASS_MIDS) != params.CLASS_NAMES:  # pragma: no cover - a programming error
    raise RuntimeError("pipeline.labels.CLASS_MIDS must follow params.CLASS_NAMES")


class LabelDataError(ValueError):
    """The AudioSet label index or ontology is missing or malformed."""


@dataclass(frozen=True)
class AudioSetLabel:
    """One row of ``class_labels_indices.csv``."""

    index: int
    mid: str
    name: str


def read_label_index(path: str | os.PathLike) -> tuple[AudioSetLabel, ...]:
    """Reads AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``).

    Returns:
      The labels ordered by index (index i at position i).

    Raises:
      LabelDataError: the file is missing, lacks the columns, or its indices
        are not 0..n-1.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelDataError(
            f"AudioSet label index not found: {p} (it ships with the AudioSet release as {LABELS_CSV_NAME})"
        )
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"index", "mid", "display_name"} <= set(reader.fieldnames):
            raise LabelDataError(f"{p}: expected columns index,mid,display_name; got {reader.fieldnames}")
        try:
            rows = [AudioSetLabel(int(r["index"]), r["mid"], r["display_name"]) for r in reader]
        except (TypeError, ValueError) as exc:
            raise LabelDataError(f"{p}: bad row: {exc}") from None
    rows.sort(key=lambda r: r.index)
    if [r.index for r in rows] != list(range(len(rows))) or not rows:
        raise LabelDataError(f"{p}: indices must be 0..n-1 without gaps")
    return tuple(rows)


def read_ontology(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads AudioSet's ``ontology.json`` into ``{mid: entry}``.

    Raises:
      LabelDataError: missing file, invalid JSON or entries without ``id``/``child_ids``.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelDataError(
            f"AudioSet ontology not found: {p} (get {ONTOLOGY_JSON_NAME} from "
            "https://github.com/audioset/ontology)"
        )
    try:
        entries = json.loads(p.read_text(encoding="utf-8"))
        return {e["id"]: {**e, "child_ids": list(e["child_ids"])} for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise LabelDataError(f"{p}: not an AudioSet ontology ({exc})") from None


def descendants(ontology: dict[str, dict[str, Any]], mid: str) -> frozenset[str]:
    """The mid and every mid below it (the ontology is a DAG: nodes may repeat)."""
    if mid not in ontology:
        raise LabelDataError(f"mid {mid} is not in the ontology")
    seen: set[str] = set()
    stack = [mid]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(c for c in ontology.get(m, {}).get("child_ids", ()) if c not in seen)
    return frozenset(seen)


@dataclass(frozen=True)
class ClassMap:
    """The four classes and the AudioSet label indices each covers.

    Attributes:
      names: class names in output order (``params.CLASS_NAMES``).
      mids: AudioSet mid per class.
      label_indices: per class, the sorted AudioSet label indices it covers.
      num_labels: size of the AudioSet label vocabulary (527).
      mapping: ``"ontology"`` or ``"direct"``.
      ontology, captions, urgent: per class, from a class set
        (:mod:`pipeline.classset`); empty for the built-in four classes.
    """

    names: tuple[str, ...]
    mids: tuple[str, ...]
    label_indices: tuple[tuple[int, ...], ...]
    num_labels: int = params.AUDIOSET_NUM_LABELS
    mapping: str = "ontology"
    ontology: tuple[tuple[str, ...], ...] = ()
    captions: tuple[str, ...] = ()
    urgent: tuple[bool, ...] = ()

    def matrix(self) -> npt.NDArray[np.float32]:
        """float32 ``[num_labels, num_classes]``: 1 where label i belongs to class c."""
        m = np.zeros((self.num_labels, len(self.names)), dtype=np.float32)
        for c, idx in enumerate(self.label_indices):
            m[list(idx), c] = 1.0
        return m

    def targets(self, multi_hot: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Class targets from AudioSet label vectors.

        Args:
          multi_hot: ``[N, num_labels]`` 0/1 AudioSet labels.

        Returns:
          uint8 ``[N, num_classes]``, 1 where the clip carries any label of the class.
        """
        y = np.asarray(multi_hot)
        if y.ndim != 2 or y.shape[1] != self.num_labels:
            raise ValueError(f"expected labels [N, {self.num_labels}]; got {y.shape}")
        return ((y.astype(np.float32) @ self.matrix()) > 0).astype(np.uint8)

    def targets_from_indices(self, label_lists: Iterable[Sequence[int]]) -> npt.NDArray[np.uint8]:
        """Like :meth:`targets`, from per-clip lists of label indices. uint8 ``[N, C]``."""
        sets = [frozenset(i) for i in self.label_indices]
        return np.array(
            [[1 if any(int(l) in s for l in labels) else 0 for s in sets] for labels in label_lists],
            dtype=np.uint8,
        ).reshape(-1, len(sets))

    def to_metadata(self) -> list[dict[str, Any]]:
        """The bundle's ``classes`` entry: ``[{name, mid, label_indices}, ...]``,
        with ``ontology``, ``caption`` and ``urgent`` when the map came from a class set."""
        out = []
        for c, (n, m, i) in enumerate(zip(self.names, self.mids, self.label_indices)):
            entry: dict[str, Any] = {"name": n, "mid": m, "label_indices": list(i)}
            if self.ontology:
                entry["ontology"] = list(self.ontology[c])
            if self.captions:
                entry["caption"] = self.captions[c]
            if self.urgent:
                entry["urgent"] = bool(self.urgent[c])
            out.append(entry)
        return out

    @classmethod
    def from_metadata(cls, classes: Sequence[dict[str, Any]], num_labels: int = params.AUDIOSET_NUM_LABELS,
                      mapping: str = "ontology") -> "ClassMap":
        """Rebuilds the map from a bundle's ``classes`` entry."""
        try:
            return cls(
                names=tuple(str(c["name"]) for c in classes),
                mids=tuple(str(c["mid"]) for c in classes),
                label_indices=tuple(tuple(int(i) for i in c["label_indices"]) for c in classes),
                num_labels=num_labels,
                mapping=mapping,
                ontology=tuple(tuple(c["ontology"]) for c in classes) if all("ontology" in c for c in classes) else (),
                captions=tuple(str(c["caption"]) for c in classes) if all("caption" in c for c in classes) else (),
                urgent=tuple(bool(c["urgent"]) for c in classes) if all("urgent" in c for c in classes) else (),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelDataError(f"bad 'classes' metadata: {exc}") from None


def build_class_map(
    labels_csv: str | os.PathLike,
    ontology_json: str | os.PathLike | None = None,
    mapping: str = "ontology",
) -> ClassMap:
    """Maps the four classes onto AudioSet label indices.

    Args:
      labels_csv: ``class_labels_indices.csv``.
      ontology_json: ``ontology.json``; required for the ``"ontology"`` mapping.
      mapping: ``"ontology"`` (node and descendants) or ``"direct"`` (node only,
        as in the paper).

    Returns:
      The class map, classes in ``params.CLASS_NAMES`` order.

    Raises:
      ValueError: unknown mapping; LabelDataError: missing/malformed files or a
        class mid absent from the label index.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}; got {mapping!r}")
    labels = read_label_index(labels_csv)
    by_mid = {l.mid: l.index for l in labels}
    if mapping == "ontology":
        if ontology_json is None:
            raise LabelDataError("the 'ontology' mapping needs ontology.json")
        onto = read_ontology(ontology_json)
    indices = []
    for name in params.CLASS_NAMES:
        mid = CLASS_MIDS[name]
        if mid not in by_mid:
            raise LabelDataError(f"{labels_csv}: class {name} ({mid}) is not an AudioSet label")
        mids = descendants(onto, mid) if mapping == "ontology" else frozenset([mid])
        indices.append(tuple(sorted(by_mid[m] for m in mids if m in by_mid)))
        _LOGGER.debug("class %s covers %d labels", name, len(indices[-1]))
    return ClassMap(
        names=params.CLASS_NAMES,
        mids=tuple(CLASS_MIDS[n] for n in params.CLASS_NAMES),
        label_indices=tuple(indices),
        num_labels=len(labels),
        mapping=mapping,
    )


def find_audioset_metadata(start: str | os.PathLike, levels: int = 4) -> tuple[Path, Path | None]:
    """Finds ``class_labels_indices.csv`` and ``ontology.json`` near a data directory.

    Looks in ``start`` and up to ``levels`` parents (the release keeps them two
    levels above ``bal_train/``).

    Returns:
      ``(labels_csv, ontology_json_or_None)``.

    Raises:
      LabelDataError: no label index found; the message says which option to pass.
    """
    here = Path(start).resolve()
    if here.is_file() or not here.exists():
        here = here.parent
    candidates = [here, *list(here.parents)[:levels]]
    csv_path = next((d / LABELS_CSV_NAME for d in candidates if (d / LABELS_CSV_NAME).is_file()), None)
    if csv_path is None:
        raise LabelDataError(
            f"{LABELS_CSV_NAME} not found in {here} or its {levels} parents; "
            "pass --labels-csv (and --ontology) explicitly"
        )
    onto = next((d / ONTOLOGY_JSON_NAME for d in candidates if (d / ONTOLOGY_JSON_NAME).is_file()), None)
    return csv_path, onto
