"""Class sets: which sounds a model captions, as data (a TOML file).

A class set names its classes in output order. Each class gives AudioSet
ontology names (each node covers its descendants), the caption text and
whether the class is urgent (the display and Home Assistant alert for it)::

    name = "home"
    [[classes]]
    name = "Alarm"
    ontology = ["Alarm"]
    caption = "[Alarm]"      # default "[<name>]"
    urgent = true            # default false

Two sets ship in ``pipeline/classsets/``: ``four`` (the default: Speech,
Animal, Music, Vehicle) and ``home`` (the four, alarms, the door, a crying
baby and running water); ``audiocap-train fit --classes`` takes their name or
a file. Pure Python: the daemon may import this without TensorFlow.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.labels import MAPPINGS, ClassMap, LabelDataError, descendants, read_label_index, read_ontology

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SHIPPED_DIR = Path(__file__).resolve().parent / "classsets"
"""Where the shipped class sets live (``<name>.toml``)."""
DEFAULT_CLASS_SET = "four"
_TOP_KEYS = {"name", "description", "classes"}
_CLASS_KEYS = {"name", "ontology", "caption", "urgent"}


class ClassSetError(LabelDataError):
    """A class-set file is missing or wrong; the message names the file, the class and the fix."""


@dataclass(frozen=True)
class ClassSpec:
    """One class of a set.

    Attributes:
      name: the class name (scores, topics and captions use it).
      ontology: AudioSet ontology display names it covers, descendants included.
      caption: the caption text, e.g. ``"[Alarm]"``.
      urgent: whether people must not miss it.
    """

    name: str
    ontology: tuple[str, ...]
    caption: str
    urgent: bool = False


@dataclass(frozen=True)
class ClassSet:
    """A class set read from a file (see the module docstring)."""

    name: str
    classes: tuple[ClassSpec, ...]
    path: str
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def class_map(self, labels_csv: str | os.PathLike, ontology_json: str | os.PathLike | None,
                  mapping: str = "ontology") -> ClassMap:
        """Resolves the ontology names to AudioSet label indices.

        Args:
          labels_csv: ``class_labels_indices.csv`` (the 527 labels).
          ontology_json: ``ontology.json`` (names are looked up there).
          mapping: ``"ontology"`` (each node and its descendants) or ``"direct"``
            (the nodes' own labels only).

        Raises:
          ClassSetError: an unknown ontology name (with close matches), or a
            class that covers no AudioSet label.
        """
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}; got {mapping!r}")
        if ontology_json is None:
            raise ClassSetError(f"{self.path}: class sets name ontology nodes, so they need ontology.json "
                                "(pass --ontology)")
        labels = read_label_index(labels_csv)
        by_mid = {l.mid: l.index for l in labels}
        onto = read_ontology(ontology_json)
        by_name = {str(e.get("name")): mid for mid, e in onto.items()}
        mids, indices = [], []
        for spec in self.classes:
            covered: set[int] = set()
            spec_mids = []
            for node in spec.ontology:
                if node not in by_name:
                    close = difflib.get_close_matches(node, list(by_name), n=3, cutoff=0.6)
                    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                        "; names are the 'name' fields of ontology.json, spelled exactly"
                    raise ClassSetError(f"{self.path}: class {spec.name!r}: unknown AudioSet ontology name "
                                        f"{node!r}{hint}")
                mid = by_name[node]
                spec_mids.append(mid)
                nodes = descendants(onto, mid) if mapping == "ontology" else frozenset([mid])
                covered.update(by_mid[m] for m in nodes if m in by_mid)
            if not covered:
                raise ClassSetError(f"{self.path}: class {spec.name!r} covers no AudioSet label "
                                    f"({', '.join(spec.ontology)}); choose nodes that are labels or have labels below")
            mids.append(spec_mids[0])
            indices.append(tuple(sorted(covered)))
        return ClassMap(
            names=self.names,
            mids=tuple(mids),
            label_indices=tuple(indices),
            num_labels=len(labels),
            mapping=mapping,
            ontology=tuple(c.ontology for c in self.classes),
            captions=tuple(c.caption for c in self.classes),
            urgent=tuple(c.urgent for c in self.classes),
        )


def shipped_class_sets() -> dict[str, Path]:
    """The class sets shipped with audiocap: name -> file."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.toml"))}


def class_set_path(name_or_path: str | os.PathLike) -> Path:
    """A class-set file from a path, or from a shipped set's name (``home``)."""
    p = Path(name_or_path)
    if not p.exists() and len(p.parts) == 1 and p.name in shipped_class_sets():
        return shipped_class_sets()[p.name]
    return p


def load_class_set(name_or_path: str | os.PathLike = DEFAULT_CLASS_SET) -> ClassSet:
    """Reads and checks a class-set file (names are checked against the
    ontology later, by :meth:`ClassSet.class_map`).

    Raises:
      ClassSetError: one line naming the file, what is wrong and the fix.
    """
    path = class_set_path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(shipped_class_sets()) or "none"
        raise ClassSetError(f"class set not found: {path} (shipped class sets, usable by name: {shipped})")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClassSetError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ClassSetError(f"{path}: unknown key(s) {unknown}; a class set has {sorted(_TOP_KEYS)}")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ClassSetError(f"{path}: 'name' must be a non-empty string")
    entries = doc.get("classes")
    if not isinstance(entries, list) or not entries:
        raise ClassSetError(f"{path}: no classes; add [[classes]] tables with name and ontology")
    classes = [_class_spec(path, i, e) for i, e in enumerate(entries, 1)]
    seen: set[str] = set()
    for c in classes:
        if c.name.casefold() in seen:
            raise ClassSetError(f"{path}: class {c.name!r} appears twice; class names must be unique")
        seen.add(c.name.casefold())
    return ClassSet(name=name, classes=tuple(classes), path=str(path), description=str(doc.get("description", "")))


def _class_spec(path: Path, i: int, entry: Any) -> ClassSpec:
    where = f"{path}: class {i}"
    if not isinstance(entry, dict):
        raise ClassSetError(f"{where}: expected a [[classes]] table")
    unknown = sorted(set(entry) - _CLASS_KEYS)
    if unknown:
        raise ClassSetError(f"{where}: unknown key(s) {unknown}; a class has {sorted(_CLASS_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "/" in name or "+" in name \
            or "#" in name:
        raise ClassSetError(f"{where}: 'name' must be a non-empty string without surrounding spaces, '/', '+' "
                            f"or '#' (it becomes part of MQTT topics); got {name!r}")
    where = f"{path}: class {name!r}"
    onto = entry.get("ontology")
    if isinstance(onto, str):
        onto = [onto]
    if not isinstance(onto, list) or not onto or not all(isinstance(n, str) and n for n in onto):
        raise ClassSetError(f"{where}: 'ontology' must be a non-empty list of AudioSet ontology names")
    caption = entry.get("caption", f"[{name}]")
    if not isinstance(caption, str) or not caption.strip():
        raise ClassSetError(f"{where}: 'caption' must be a non-empty string")
    urgent = entry.get("urgent", False)
    if not isinstance(urgent, bool):
        raise ClassSetError(f"{where}: 'urgent' must be true or false; got {urgent!r}")
    return ClassSpec(name=name, ontology=tuple(onto), caption=caption, urgent=urgent)

