"""The running service: one worker thread, the main thread supervising, sinks delivering.

Threads and their owners:

* the **worker** (``audiocap-worker``) owns the source iterator, the models,
  the window and the event tracker (:class:`daemon.chain.CaptionChain`), and
  hands outputs to the sinks;
* the **PortAudio callback** (mic only) only copies blocks into the source's
  bounded queue;
* **paho's network thread** owns the MQTT socket;
* the **main thread** handles signals, the systemd notify protocol (READY,
  STATUS, WATCHDOG), the metrics message, and the ordered shutdown.

Stopping: SIGTERM/SIGINT set a ``threading.Event``; the source returns, the
worker ends open events and returns, the sinks deliver what they can within
the remaining time, ``offline`` is published and the process exits 0 within
``SHUTDOWN_SECONDS``. With ``exit_at_end`` the end of a file or replay does the
same, waiting up to ``drain_timeout_s`` for the broker. SIGHUP reloads: the
new configuration is checked first (a bad one is refused with one line and
the service goes on), then the service stops as for SIGTERM and the caller
re-executes the daemon (:attr:`Service.reload_requested`).

Supervision: the worker never dies of its input. A source that fails ends
the open captions (an ``end`` each) and is logged once with its cause; a live
source is then re-opened with back-off, a file or replay counts as ended
(exit ``EX_DATAERR`` at the end of the run). A block the chain cannot process
is skipped and counted, open captions ended; only a chain failing on
:data:`MAX_CONSECUTIVE_FAILURES` blocks in a row stops the service (exit 1).
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from daemon.chain import CaptionChain, WindowScores
from daemon.config import Config
from daemon.exitcodes import EX_DATAERR, EX_TEMPFAIL
from daemon.sdnotify import Notifier
from daemon.sinks.base import Sink
from daemon.sources import AudioBlock, Block, EmbeddingBlock, Source
from pipeline import captions, params
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5
"""Blocks in a row the chain may fail on before the service gives up (exit 1)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, or ``None`` when empty."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def block_seconds(block: Block) -> float:
    """Audio time a block covers."""
    if isinstance(block, AudioBlock):
        return block.samples.shape[0] / block.sample_rate
    if isinstance(block, EmbeddingBlock):
        return block.embeddings.shape[0] * params.EMBEDDING_SECONDS
    return 0.0


class ChainTimer:
    """Processing time of the chain per second of audio.

    Blocks are grouped until they cover at least one second of audio; each
    group gives one sample, milliseconds of processing per second of audio.
    """

    def __init__(self, history: int = params.METRICS_HISTORY) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=history)
        self._audio = 0.0
        self._proc = 0.0

    def add(self, audio_s: float, proc_s: float) -> None:
        """Accounts one block."""
        self._audio += audio_s
        self._proc += proc_s
        if self._audio >= 1.0:
            self.samples.append(1000.0 * self._proc / self._audio)
            self._audio = self._proc = 0.0


class Service:
    """Runs a source through the chain into the sinks until stopped or ended.

    Args:
      config: the configuration.
      source: an opened source (see :func:`daemon.sources.make_source`).
      chain: the caption chain (models, window, tracker).
      sinks: started by :meth:`run`, closed at the end.
      notifier: systemd notify protocol (default: from the environment).
      handle_signals: install SIGTERM/SIGINT/SIGHUP handlers (main thread only).
      description: the effective configuration for the "ready" log line.
      check_reload: called on SIGHUP; returns ``None`` when the configuration
        on disk is good (the service then stops for a reload), else the
        one-line reason it is refused. Without it SIGHUP is a clean stop.
    """

    def __init__(
        self,
        config: Config,
        source: Source,
        chain: CaptionChain,
        sinks: Sequence[Sink],
        notifier: Notifier | None = None,
        handle_signals: bool = True,
        description: str = "",
        check_reload: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.chain = chain
        self.sinks = list(sinks)
        self.notifier = notifier if notifier is not None else Notifier()
        self.handle_signals = handle_signals
        self.description = description
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._worker = threading.Thread(target=self._work, name="audiocap-worker", daemon=True)
        self._worker_done = threading.Event()
        self._source_ended = False
        self._error: BaseException | None = None
        self._signal: str | None = None
        self._busy_since: float | None = None
        self._sink_failures: set[int] = set()
        self._fatal: tuple[int, str] | None = None  # a sink that can never deliver again: (exit code, why)
        self._source_failed = False
        self._hup = threading.Event()
        self.check_reload = check_reload
        self.reload_requested = False
        """True when the service stopped for a SIGHUP reload (the caller re-executes)."""
        self.timer = ChainTimer()
        self.started = time.monotonic()
        self.counts = {"blocks": 0, "audio_s": 0.0, "events": 0, "windows": 0, "bad_blocks": 0,
                       "source_failures": 0}

    # --- worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self._run_source():
                    self._source_ended = not self.stop_event.is_set()
                    break
                if self.source.finite or self._error is not None:
                    break
                # A live source whose generator failed: open it again, with back-off.
                self.stop_event.wait(min(30.0, 2.0 ** min(self.counts["source_failures"], 5)))
            self._busy_since = time.monotonic()
            # End of run or stop: the resampler's tail, then close open events.
            self._end_stream(time.time())
        finally:
            self._busy_since = None
            self._worker_done.set()
            self._wake.set()

    def _run_source(self) -> bool:
        """Feeds the source's blocks to the chain; True when the source ended
        (or a stop was asked), False when it failed."""
        failures = 0
        blocks = self.source.blocks(self.stop_event)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return True
            except Exception as exc:  # a source/decoder failure: never the end of the service
                self.counts["source_failures"] += 1
                self._source_failed = self.source.finite
                _LOGGER.error("source %s failed: %s; %s", self.source.name, _one_line(exc),
                              "ending it here" if self.source.finite else "re-opening it with back-off")
                _LOGGER.debug("source failure", exc_info=True)
                self._end_stream(time.time())
                return self.source.finite
            self._busy_since = time.monotonic()
            t = time.perf_counter()
            try:
                self._dispatch(self.chain.feed(block))
                failures = 0
            except Exception as exc:  # a block the chain cannot process: skip it, end open captions
                failures += 1
                self.counts["bad_blocks"] += 1
                level = logging.ERROR if self.counts["bad_blocks"] == 1 or failures > 1 else logging.DEBUG
                _LOGGER.log(level, "skipping a block the caption chain cannot process (%s); open captions "
                            "ended", _one_line(exc))
                _LOGGER.debug("chain failure", exc_info=True)
                self._end_stream(getattr(block, "available", time.time()))
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    self._error = exc
                    _LOGGER.error("the caption chain failed on %d blocks in a row (%s); stopping",
                                  failures, _one_line(exc))
                    return False
            if all(getattr(sink, "failed", False) for sink in self.sinks):
                _LOGGER.error("every sink has failed (e.g. stdout was closed); stopping")
                self.stop_event.set()
                self._wake.set()
            audio_s = block_seconds(block)
            self.timer.add(audio_s, time.perf_counter() - t)
            self.counts["blocks"] += 1
            self.counts["audio_s"] += audio_s
            self._busy_since = None
            if self.stop_event.is_set():
                return True

    def _end_stream(self, origin: float) -> None:
        """Ends open captions; if the chain cannot (it is what failed), the tracker still can."""
        try:
            self._dispatch(self.chain.end_stream(origin))
        except Exception as exc:  # noqa: BLE001 - the stream is being abandoned anyway
            _LOGGER.debug("ending the stream failed (%s); ending the captions directly", _one_line(exc))
            try:
                self._dispatch(self.chain.abandon_stream(origin))
            except Exception:  # noqa: BLE001
                _LOGGER.error("cannot end the open captions: %s", _one_line(exc))

    def _dispatch(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, WindowScores):
                self.counts["windows"] += 1
                for sink in self.sinks:
                    self._call(sink, "on_scores", out.t_start, out.t_end, out.scores, out.origin, out.level_dbfs)
            elif isinstance(out, CaptionEvent):
                self.counts["events"] += 1
                _LOGGER.debug("%s %s %s (score %.2f)", out.type, out.caption, captions.iso_utc(
                    out.start if out.type == "start" else (out.end or out.start)), out.score)
                for sink in self.sinks:
                    self._call(sink, "on_event", out)

    def _call(self, sink: Any, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as exc:
            # One log per sink: a broken sink must not stop captioning for the others.
            if id(sink) not in self._sink_failures:
                self._sink_failures.add(id(sink))
                _LOGGER.error("sink %s failed in %s: %s", getattr(sink, "kind", type(sink).__name__), method,
                              _one_line(exc))
                _LOGGER.debug("sink failure", exc_info=True)

    # --- main thread ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP and self.check_reload is not None:
            # Checked on the main thread's loop, not in the handler.
            self._hup.set()
            self._wake.set()
            return
        self._signal = signal.Signals(signum).name
        self.stop_event.set()
        self._wake.set()

    def _on_hup(self) -> None:
        self._hup.clear()
        problem = self.check_reload() if self.check_reload is not None else None
        if problem:
            _LOGGER.error("SIGHUP: the new configuration is refused (%s); going on with the running one", problem)
            return
        _LOGGER.info("SIGHUP: reloading the configuration (stop, deliver, start again)")
        self.notifier.reloading("reloading the configuration")
        self.reload_requested = True
        self._signal = "SIGHUP"
        self.stop_event.set()

    def _on_sink_fatal(self, code: int, message: str) -> None:
        """A sink found it can never deliver (another daemon has its node name):
        the service stops with ``code``; the sink has logged why."""
        if self._fatal is None:
            self._fatal = (code, message)
        self.stop_event.set()
        self._wake.set()

    def request_stop(self) -> None:
        """Asks the service to stop (as SIGTERM does)."""
        self._signal = self._signal or "request"
        self.stop_event.set()
        self._wake.set()

    def healthy(self) -> bool:
        """False when the worker is stuck on one block for longer than the watchdog allows."""
        busy = self._busy_since
        limit = self.notifier.watchdog_s or 60.0
        return busy is None or time.monotonic() - busy < limit * 0.75

    def metrics(self) -> dict[str, Any]:
        """The health/metrics message."""
        proc = list(self.timer.samples)
        out: dict[str, Any] = {
            "t": captions.iso_utc(time.time()),
            "node": self.config.daemon.node,
            "source": self.source.name,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "blocks": self.counts["blocks"],
            "audio_s": round(self.counts["audio_s"], 2),
            "embeddings": self.chain.embeddings,
            "windows": self.counts["windows"],
            "events": self.counts["events"],
            "proc_ms_per_s_p50": _round(percentile(proc, 50)),
            "proc_ms_per_s_p95": _round(percentile(proc, 95)),
        }
        src = self.source.stats()
        out["overflows"] = src.get("overflows", 0) + src.get("dropped_blocks", 0)
        out["source_state"] = src.get("state", "ended" if self._source_ended else "running")
        queue_depth = src.get("queue_depth", 0)
        dropped = 0
        latencies: list[float] = []
        for sink in self.sinks:
            st = sink.stats()
            queue_depth += st.queued
            dropped += st.dropped
            if st.connected is not None:
                out[f"{st.kind}_connected"] = st.connected
            latencies += st.latencies_s
        out["queue_depth"] = queue_depth
        out["dropped_captions"] = dropped
        out["publish_latency_ms_p50"] = _round(_ms(percentile(latencies, 50)))
        out["publish_latency_ms_p95"] = _round(_ms(percentile(latencies, 95)))
        out["bad_blocks"] = self.counts["bad_blocks"]
        out["source_failures"] = self.counts["source_failures"]
        for key in ("clips", "corrupt"):
            if key in src:
                out[f"replay_{key}"] = src[key]
        for key in ("truncated", "damaged", "nonfinite"):
            if key in src:
                out[f"file_{key}"] = src[key]
        return out

    def _status_line(self, m: dict[str, Any]) -> str:
        mqtt = "" if "mqtt_connected" not in m else (" mqtt up" if m["mqtt_connected"] else " mqtt DOWN")
        return (f"{m['source_state']} {m['source']}: {m['audio_s']:.0f} s audio, {m['events']} caption edges, "
                f"p95 {m['proc_ms_per_s_p95'] or 0:.0f} ms/s{mqtt}, queue {m['queue_depth']}")

    def run(self) -> int:
        """Runs until stopped (signal, :meth:`request_stop`) or, with ``exit_at_end``, the source ends.

        Returns:
          The process exit code: 0 after a clean stop, 1 if the chain kept
          failing, ``EX_DATAERR`` (65) if a file or replay failed mid-way,
          ``EX_TEMPFAIL`` (75) if a run that ended with its source did not
          deliver every caption, the code a sink gave up with (78: another
          daemon has this node name).
        """
        old_handlers = {}
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            for sink in self.sinks:
                if hasattr(sink, "on_fatal"):
                    sink.on_fatal = self._on_sink_fatal
                sink.start()
            self._worker.start()
            self.notifier.ready(f"capturing from {self.source.name}")
            _LOGGER.info("ready: %s", self.description or self.source.name)
            self._supervise()
            return self._shutdown()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _supervise(self) -> None:
        interval = self.config.daemon.metrics_interval_s
        next_metrics = time.monotonic() + interval
        wd = self.notifier.watchdog_s
        next_wd = time.monotonic()
        idle_logged = False
        while True:
            now = time.monotonic()
            if wd and now >= next_wd:
                if self.healthy():
                    self.notifier.watchdog()
                else:
                    _LOGGER.error("the worker has been stuck for %.0f s; not feeding the watchdog",
                                  now - (self._busy_since or now))
                next_wd = now + wd / 2
            if now >= next_metrics:
                m = self.metrics()
                _LOGGER.debug("metrics %s", m)
                for sink in self.sinks:
                    self._call(sink, "on_metrics", m)
                self.notifier.status(self._status_line(m))
                next_metrics = now + interval
            if self._hup.is_set():
                self._on_hup()
            if self.stop_event.is_set():
                return
            if self._worker_done.is_set():
                if self._error is not None or self.config.daemon.exit_at_end or not self._source_ended:
                    return
                if not idle_logged:
                    _LOGGER.info("%s ended; staying up until stopped (use --exit-at-end to exit)", self.source.name)
                    self.notifier.status(f"{self.source.name} ended; idle")
                    idle_logged = True
            deadlines = [next_metrics]
            if wd:
                deadlines.append(next_wd)
            self._wake.wait(max(0.01, min(deadlines) - time.monotonic()))
            self._wake.clear()

    def _shutdown(self) -> int:
        t0 = time.monotonic()
        # A fatal sink stops as a signal does: nothing more will be delivered, no point waiting.
        signalled = self._signal is not None or self._fatal is not None
        reason = (f"signal {self._signal}" if self._signal else "a sink cannot go on" if self._fatal
                  else "end of source" if self._source_ended else "error")
        _LOGGER.info("stopping (%s)", reason)
        self.notifier.stopping(f"stopping ({reason})")
        self.stop_event.set()
        budget = params.SHUTDOWN_SECONDS
        self._worker.join(timeout=budget * 0.4 if signalled else None)
        if self._worker.is_alive():
            _LOGGER.warning("the worker did not stop within %.1f s; leaving it", budget * 0.4)
        if signalled:
            # Keep 1 s for closing: the MQTT sink may wait 0.5 s for paho's thread.
            drain = max(0.05, budget - (time.monotonic() - t0) - 1.0)
        else:
            drain = self.config.daemon.drain_timeout_s
        for sink in self.sinks:
            self._call(sink, "drain", drain)
        for sink in self.sinks:
            self._call(sink, "close")
        m = self.metrics()
        stats = [sink.stats() for sink in self.sinks]
        undelivered = sum(st.undelivered for st in stats)
        kept = sum(st.kept for st in stats)
        dropped = m["dropped_captions"]
        if dropped or undelivered:
            lost = dropped + undelivered - kept
            _LOGGER.error("stopped after %.1f s of audio, %d caption edges; %d caption message(s) NOT delivered: "
                          "%d lost (%d dropped by a full queue, %d undelivered at exit), %d kept in the journal "
                          "for the next start; in %.2f s", m["audio_s"], m["events"], dropped + undelivered, lost,
                          dropped, undelivered - kept, kept, time.monotonic() - t0)
        else:
            _LOGGER.info("stopped after %.1f s of audio, %d caption edges, every caption delivered, in %.2f s",
                         m["audio_s"], m["events"], time.monotonic() - t0)
        self.notifier.close()
        if self._error is not None:
            return 1
        if self._fatal is not None:
            return self._fatal[0]
        if signalled:
            return 0
        if self._source_failed:
            return EX_DATAERR
        # A finite run whose captions did not all arrive must not look like success.
        return EX_TEMPFAIL if dropped or undelivered else 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
