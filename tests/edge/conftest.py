"""The edge profile: a virtual environment without TensorFlow, built by the
same `scripts/setup --edge` a user runs on an edge box."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import helpers


@pytest.fixture(scope="session")
def edge_python() -> Path:
    """Python of a TensorFlow-free venv where `scripts/setup --edge` installed the
    project (editable). Cached per checkout and requirements under the temp dir."""
    req = helpers.REPO / "requirements-edge.txt"
    key = hashlib.sha256(req.read_bytes() + str(helpers.REPO).encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"audiocap-edge-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
        proc = subprocess.run(
            [str(helpers.REPO / "scripts" / "setup"), "--edge", "--python-only"],
            env=env, capture_output=True, text=True, timeout=1200,
        )
        if proc.returncode != 0:
            pytest.fail(f"scripts/setup --edge failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        (venv / ".ready").write_text(key)
    return python


@pytest.fixture()
def edge_env() -> dict[str, str]:
    """Environment for processes in the edge venv (no PYTHONPATH leaking in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env
