"""Quiet, true logs: the real commands print only lines the project wrote.

`audiocapd --source file:… --sink stdout` (TensorFlow and LiteRT), a replay,
and `audiocap-train evaluate`: every stderr line must be one of our log
lines; `--debug` lets TensorFlow Lite's native XNNPACK line through. The
`ready:` line names only what is in use, and the runtimes are named in one
vocabulary (tensorflow | litert).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

import helpers

DAEMON_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (daemon|pipeline)[.\w]*: ")
TRAIN_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) (train|pipeline)[.\w]*: ")
XNNPACK = "Created TensorFlow Lite XNNPACK delegate"


def _env() -> dict[str, str]:
    # No TF_CPP_MIN_LOG_LEVEL from the test run: the commands must be quiet on their own.
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=300)


def _foreign(stderr: str, pattern: re.Pattern) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not pattern.match(ln)]


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    return helpers.espeak_wav("Is anybody there? The train leaves at nine.",
                              tmp_path_factory.mktemp("quiet") / "speech.wav", rate=44100)


@pytest.mark.parametrize("runtime", ["tensorflow", "litert"])
def test_file_to_stdout_prints_only_our_lines(runtime, speech_wav, vggish_ckpt, vggish_tflite, pca_path, tmp_path):
    vggish = vggish_ckpt if runtime == "tensorflow" else vggish_tflite["int8"]
    proc = _run("-m", "daemon", "--source", f"file:{speech_wav}", "--sink", "stdout", "--pace", "fast",
                "--exit-at-end", "--runtime", runtime, "--vggish", str(vggish), "--pca", str(pca_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _foreign(proc.stderr, DAEMON_LINE) == []
    ready = next(ln for ln in proc.stderr.splitlines() if "ready:" in ln)
    assert "mqtt=" not in ready and "password=" not in ready  # no MQTT sink in use
    assert f"runtime={runtime}" in ready and f"vggish={vggish}" in ready
    models = [ln for ln in proc.stderr.splitlines() if "daemon.models: models:" in ln]
    assert len(models) == 1, proc.stderr
    # VGGish on the configured runtime; the bundled classifier's .tflite runs on LiteRT.
    assert f"VGGish {vggish} on {runtime}, classifier audiocap-" in models[0] and " on litert," in models[0]
    assert not re.search(r"\((tensorflow|litert|keras) runtime\)", proc.stderr)


def test_debug_lets_native_lines_through(speech_wav, vggish_tflite, pca_path, tmp_path):
    args = ["-m", "daemon", "--source", f"file:{speech_wav}", "--sink", "stdout", "--pace", "fast",
            "--exit-at-end", "--runtime", "litert", "--vggish", str(vggish_tflite["int8"]), "--pca", str(pca_path)]
    quiet, loud = _run(*args, cwd=tmp_path), _run(*args, "--debug", cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0, loud.stderr[-3000:]
    assert XNNPACK not in quiet.stderr
    assert XNNPACK in loud.stderr  # so the quiet run did hide a line that is really printed
    assert len(quiet.stdout.splitlines()) == len(loud.stdout.splitlines())  # same captions either way


def test_replay_ready_line_names_only_what_is_used(bal_train_dir, tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    for f in sorted(bal_train_dir.glob("*.tfrecord"))[:5]:
        (replay / f.name).symlink_to(f)
    proc = _run("-m", "daemon", "--source", f"replay:{replay}", "--sink", "stdout", "--pace", "fast",
                "--exit-at-end", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _foreign(proc.stderr, DAEMON_LINE) == []
    ready = next(ln for ln in proc.stderr.splitlines() if "ready:" in ln)
    for unused in ("vggish=", "pca=", "runtime=", "mqtt=", "tls="):
        assert unused not in ready, ready
    assert "VGGish" not in next(ln for ln in proc.stderr.splitlines() if "models:" in ln)


def test_train_evaluate_prints_only_our_lines(bal_train_dir, tmp_path):
    # The release's layout: the label files two levels above the tfrecords.
    audioset = bal_train_dir.parents[1]
    data = tmp_path / "audioset" / "embeddings" / "bal_train"
    data.mkdir(parents=True)
    for name in ("class_labels_indices.csv", "ontology.json"):
        (tmp_path / "audioset" / name).symlink_to(audioset / name)
    for f in sorted(bal_train_dir.glob("*.tfrecord"))[:60]:
        (data / f.name).symlink_to(f)
    proc = _run("-m", "train", "evaluate", "--model", str(helpers.REPO / "pipeline/models/audiocap-4class"),
                "--data", str(data), "--split", "all", "--runtime", "litert", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"mAP"' in proc.stdout
    assert _foreign(proc.stderr, TRAIN_LINE) == []


def test_native_stderr_drops_chatter_and_keeps_the_rest(tmp_path):
    """Native writes to fd 2 inside the window: known chatter goes, the rest comes back in order."""
    script = textwrap.dedent("""
        import logging, os, sys
        logging.basicConfig(level=logging.DEBUG if sys.argv[1] == "debug" else logging.INFO)
        from pipeline.quiet import native_stderr
        with native_stderr():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"I0000 00:00:1796621945.110077   17470 port.cc:153] oneDNN custom operations are on.\\n")
            os.write(2, b"ERROR: a native error we do not know\\n")
            print("python's own line", file=sys.stderr)
        os.write(2, b"after\\n")
    """)
    for mode, want in (("quiet", ["ERROR: a native error we do not know", "python's own line", "after"]),
                       ("debug", None)):
        proc = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                              cwd=helpers.REPO, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        if want is not None:
            assert lines == want
        else:
            assert len(lines) == 5 and lines[0].startswith("INFO: Created")
