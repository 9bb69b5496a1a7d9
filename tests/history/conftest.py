"""Fixtures for the history tests: a real mosquitto (persistence on), the real service, real SQLite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hhelpers  # noqa: E402
from hhelpers import dhelpers  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = dhelpers.Mosquitto(workdir)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def history_factory(tmp_path, broker):
    made: list[hhelpers.History] = []

    def make(*extra: str, db: Path | None = None, **kw) -> hhelpers.History:
        h = hhelpers.History(tmp_path, broker.port, db, *extra, **kw)
        made.append(h)
        return h

    yield make
    hhelpers.kill_all([h.proc for h in made if h.proc is not None])


@pytest.fixture
def publisher(broker):
    p = hhelpers.Publisher(broker.port)
    yield p
    p.close()


@pytest.fixture
def requester(broker):
    r = hhelpers.Requester(broker.port)
    yield r
    r.close()
