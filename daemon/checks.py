"""``--check-config``: what start-up would refuse, found without starting.

Start-up checks, in order: the configuration, the source (a file or replay
folder that exists; the audio device), the sinks' files (subtitles, the
journal's folder), the model files (PCA, VGGish, the classifier bundle), and
the event thresholds against the classifier. ``--check-config`` runs every
check that needs nothing outside this machine, without loading VGGish (it
checks that its files are there and readable, and their sha256 where the
release file is pinned), and reports every problem, one line each.
``--check-config --connect`` also opens the audio device and connects to the
broker, as the daemon would.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config, parse_source
from daemon.exitcodes import EX_CONFIG, ExitError
from pipeline import params

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One thing start-up would refuse: the line to print and the exit code it would give."""

    message: str
    exit_code: int


def _pinned() -> dict[str, str]:
    """File name -> the sha256 of the release file, where the project pins one."""
    out = {"vggish_pca_params.npz": params.PCA_PARAMS_SHA256}
    ckpt = getattr(params, "VGGISH_CHECKPOINT_SHA256", None)
    if ckpt:
        out["vggish_model.ckpt"] = ckpt
    return out


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_file(key: str, value: str, fetch: str, where: str) -> Problem | None:
    """A model file named by ``[model] key``: present, readable, and the release's bytes where pinned."""
    p = Path(value)
    files = [p]
    if not p.exists() and Path(f"{value}.index").is_file():  # a TF2 checkpoint prefix
        files = [Path(f"{value}.index"), *p.parent.glob(f"{p.name}.data-*")]
    if not files[0].exists():
        return Problem(f"{where}: [model] {key}: {value} does not exist; {fetch}", EX_CONFIG)
    for f in files:
        readable = os.access(f, os.R_OK | (os.X_OK if f.is_dir() else 0))
        if not readable:
            return Problem(f"{where}: [model] {key}: {f} is not readable by this user; {fetch}", EX_CONFIG)
    pinned = _pinned().get(p.name)
    if pinned and p.is_file():
        try:
            got = sha256_of(p)
        except OSError as exc:
            return Problem(f"{where}: [model] {key}: cannot read {p}: {exc.strerror or exc}", EX_CONFIG)
        if got != pinned:
            return Problem(f"{where}: [model] {key}: {p} is not the VGGish release file (sha256 {got[:16]}…, "
                           f"expected {pinned[:16]}…); {fetch}", EX_CONFIG)
    return None


def _fetch_hint(asset: str, path: str) -> str:
    return f"fetch it with `python -m pipeline.assets {asset} --out {path}`"


def check_models(config: Config) -> list[Problem]:
    """The model files audio input needs (VGGish, PCA), without loading VGGish."""
    where = config.path or "the configuration"
    if parse_source(config.daemon.source).kind == "replay":
        return []  # embeddings come ready-made: no VGGish, no PCA
    m = config.model
    out: list[Problem] = []
    pca = _model_file("pca", m.pca, _fetch_hint("pca", m.pca), where)
    if pca is None:
        from pipeline.postprocess import PCAParamsError, Postprocessor

        try:
            Postprocessor(m.pca)
        except PCAParamsError as exc:
            pca = Problem(f"{where}: [model] pca: {str(exc).splitlines()[0]}", EX_CONFIG)
    if pca is not None:
        out.append(pca)
    remote = "://" in m.vggish or (not os.path.isabs(m.vggish) and m.vggish.count("/") >= 2
                                   and not os.path.exists(m.vggish))
    if not remote:
        fetch = (_fetch_hint("vggish", m.vggish) if m.runtime == "tensorflow" else
                 "make it with `audiocap-train export-vggish --source SOURCE --out DIR` (docs/edge.md)")
        problem = _model_file("vggish", m.vggish, fetch, where)
        if problem is not None:
            out.append(problem)
    return out


def check_config(config: Config, connect: bool = False) -> list[Problem]:
    """Everything start-up checks after reading the configuration, but loading VGGish on TensorFlow.

    Args:
      config: the loaded configuration.
      connect: also open the audio device and connect to the broker.

    Returns:
      The problems, in start-up order (empty when the daemon would start).
    """
    from daemon import sources
    from daemon.models import ModelError, build_models, build_tracker
    from daemon.sinks import check_sinks, probe_sinks

    out: list[Problem] = []
    source = sources.make_source(config)
    if source.finite or connect:  # a file or replay folder; the audio device only when asked
        try:
            source.open()
        except sources.SourceError as exc:
            out.append(Problem(str(exc), exc.exit_code))
    try:
        check_sinks(config)
    except ExitError as exc:
        out.append(Problem(str(exc), exc.exit_code))
    model_problems = check_models(config)
    out += model_problems
    # The classifier is small: loaded, so the thresholds are checked against its own. On
    # LiteRT VGGish is cheap to load too (no TensorFlow): loaded, when its files are there.
    full = (config.model.runtime == "litert" and not model_problems
            and parse_source(config.daemon.source).kind != "replay")
    try:
        build_tracker(build_models(config.model, need_embedder=full), config.events)
    except ModelError as exc:
        out.append(Problem(str(exc), exc.exit_code))
    except ValueError as exc:
        out.append(Problem(f"{config.path or 'the configuration'}: [events] {exc}", EX_CONFIG))
    if connect:
        out += [Problem(message, code) for message, code in probe_sinks(config)]
    return out
