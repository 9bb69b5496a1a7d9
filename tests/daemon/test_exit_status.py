"""Exit status tells the truth: a finite run that could not deliver its captions exits 75.

Real AudioSet tfrecords replayed (LiteRT classifier: no TensorFlow, a quick
start) to a broker port nothing listens on, to one with a journal, and to a
real mosquitto for the control.
"""

from __future__ import annotations

import re

import pytest

import dhelpers

SUMMARY = re.compile(r"(\d+) caption message\(s\) NOT delivered: (\d+) lost \((\d+) dropped by a full queue, "
                     r"(\d+) undelivered at exit\), (\d+) kept in the journal")


@pytest.fixture(scope="module")
def short_replay(bal_train_dir, tmp_path_factory):
    """Twenty real clips (a few hundred caption messages), linked from bal_train."""
    d = tmp_path_factory.mktemp("replay")
    for f in sorted(bal_train_dir.glob("*.tfrecord"))[:20]:
        (d / f.name).symlink_to(f)
    return d


def _run(replay, port: int, tmp_path, *extra_toml: str):
    conf = tmp_path / "audiocap.toml"
    conf.write_text("[daemon]\ndrain_timeout_s = 1.0\n" + "".join(extra_toml))
    return dhelpers.run_daemon("--config", str(conf), "--source", f"replay:{replay}", "--sink", "mqtt",
                               "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--node", "exit",
                               "--pace", "fast", "--exit-at-end", "--runtime", "litert", timeout=120)


def test_a_run_that_loses_its_captions_exits_75_and_counts_them(short_replay, tmp_path):
    r = _run(short_replay, dhelpers.free_port(), tmp_path)
    assert r.returncode == 75, r.stderr[-2000:]
    m = SUMMARY.search(r.stderr)
    assert m, r.stderr[-2000:]
    total, lost, dropped, undelivered, kept = map(int, m.groups())
    assert total > 0 and lost == total and undelivered == total and dropped == kept == 0
    assert f"{total} caption/state message(s) undelivered at exit" in r.stderr
    print(f"exit 75; {total} caption messages counted lost")


def test_a_run_whose_captions_wait_in_the_journal_exits_75_too(short_replay, tmp_path):
    spool = tmp_path / "spool.jsonl"
    r = _run(short_replay, dhelpers.free_port(), tmp_path, f'[mqtt]\nspool_file = "{spool}"\n')
    assert r.returncode == 75, r.stderr[-2000:]
    total, lost, dropped, undelivered, kept = map(int, SUMMARY.search(r.stderr).groups())
    assert kept == total > 0 and lost == 0
    assert spool.is_file()


def test_a_run_that_delivers_everything_exits_0(short_replay, mosquitto, subscriber_factory, tmp_path):
    sub = subscriber_factory(mosquitto.port, ["audiocap/exit/events"])
    r = _run(short_replay, mosquitto.port, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "every caption delivered" in r.stderr and not SUMMARY.search(r.stderr)
    edges = int(re.search(r"(\d+) caption edges", r.stderr).group(1))
    assert edges > 0 and sub.wait_for(lambda m: len(m) == edges, 10), (edges, len(sub.messages))
