"""The worker never dies of its input: failing sources and blocks the chain cannot process.

The sources here are small real ones over real ``bal_train`` clips that fail
on purpose (a decoder raising mid-file, a block of the wrong shape), run
through the real chain, classifier and service.
"""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

from daemon.chain import CaptionChain
from daemon.config import Config, DaemonConfig
from daemon.exitcodes import EX_DATAERR
from daemon.service import Service
from daemon.sinks import SinkContext, StdoutSink
from daemon.sources import EmbeddingBlock
from pipeline.audioset import iter_clips, list_tfrecords
from pipeline.events import EventTracker


@pytest.fixture(scope="module")
def clips(bal_train_dir):
    return list(iter_clips(list_tfrecords(bal_train_dir)[:12]))


@pytest.fixture(scope="module")
def clf(classifier_dir):
    from pipeline.classifier import load_classifier

    return load_classifier(classifier_dir, runtime="litert")


class ClipSource:
    """Real clips as embedding blocks; ``fail_at`` makes the generator raise
    there (a decoder failure), ``bad_at`` yields a block of the wrong shape."""

    kind = "embeddings"

    def __init__(self, clips, finite=True, fail_at=-1, bad_at=-1, fail_times=1):
        self.clips, self.finite, self.fail_at, self.bad_at = clips, finite, fail_at, bad_at
        self.fail_times = fail_times
        self.name = "clips"
        self.opened = 0

    def open(self):
        pass

    def blocks(self, stop):
        self.opened += 1
        for i, clip in enumerate(self.clips):
            if stop.is_set():
                return
            if i == self.fail_at and self.opened <= self.fail_times:
                raise OSError(5, "Input/output error")
            emb = clip.embeddings[:, :127] if i == self.bad_at else clip.embeddings
            yield EmbeddingBlock(np.ascontiguousarray(emb), 1.8e9 + 10 * i, time.time(), 0)

    def stats(self):
        return {}


def _run(source, clf, exit_at_end=True, stop_after=None):
    tracker = EventTracker(clf.classes, {c: 0.0 for c in clf.classes}, min_duration=0.0, hold=0.0)
    out = io.StringIO()
    ctx = SinkContext("sup", "clips", "m@1", clf.classes, tracker.caption_texts())
    service = Service(Config(daemon=DaemonConfig(exit_at_end=exit_at_end)), source,
                      CaptionChain(clf, tracker), [StdoutSink(ctx, out)], handle_signals=False)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(service.run()))
    t.start()
    if stop_after is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not stop_after(source):
            time.sleep(0.05)
        time.sleep(0.5)
        service.request_stop()
    t.join(60)
    assert result, "the service did not end"
    return result[0], [json.loads(x) for x in out.getvalue().splitlines()], service


def _paired(events):
    starts = [e["event_id"] for e in events if e["type"] == "start"]
    ends = [e["event_id"] for e in events if e["type"] == "end"]
    return starts and sorted(starts) == sorted(ends)


def test_a_block_the_chain_cannot_process_is_skipped_and_counted(clips, clf, caplog):
    code, events, service = _run(ClipSource(clips, bad_at=4), clf)
    assert code == 0 and service.counts["bad_blocks"] == 1
    assert _paired(events)
    # Captions were ended at the bad block, and new ones started after it.
    assert sum(e["type"] == "start" for e in events) >= 8
    assert sum("cannot process" in r.getMessage() for r in caplog.records) == 1
    assert not any(r.exc_info for r in caplog.records if r.levelname in ("ERROR", "WARNING"))


def test_a_file_source_failing_mid_way_ends_captions_and_exits_65(clips, clf, caplog):
    code, events, service = _run(ClipSource(clips, fail_at=5), clf)
    assert code == EX_DATAERR and _paired(events)
    assert sum("source clips failed" in r.getMessage() for r in caplog.records) == 1


def test_a_live_source_failing_is_reopened(clips, clf, caplog):
    source = ClipSource(clips, finite=False, fail_at=3)
    code, events, service = _run(source, clf, exit_at_end=False, stop_after=lambda s: s.opened >= 2)
    assert code == 0 and source.opened >= 2 and _paired(events)
    assert service.counts["source_failures"] == 1
    assert any("re-opening it" in r.getMessage() for r in caplog.records)
