"""The MQTT sink: captions, scores, per-class state, status, metrics, Home Assistant discovery.

Topics (``<base>`` = ``<prefix>/<node>``):

* ``<base>/status``: ``online``/``offline``, retained, QoS 1; ``offline`` is the
  last will, so it also appears when the daemon dies.
* ``<base>/events``: caption events (JSON), QoS 1, not retained.
* ``<base>/scores``: one JSON per window, QoS 0 (skipped while disconnected).
* ``<base>/onsets``: one JSON per caption start, ``{"event_type": <Class>, …}``,
  QoS 1, not retained: what Home Assistant's event entity listens to.
* ``<base>/state/<Class>``: ``ON``/``OFF``, retained, QoS 1 (``<Class>`` with
  anything but letters, digits, ``_`` and ``-`` replaced by ``_``).
* ``<base>/metrics``: health JSON every 30 s, QoS 0.
* Home Assistant discovery, retained, re-sent when ``<discovery_prefix>/status``
  says ``online``: ``<discovery_prefix>/binary_sensor/<node>_<class>/config``
  per class, ``<discovery_prefix>/event/<node>_sounds/config`` (an event entity
  whose ``event_types`` are the class names, fired on every caption start) and,
  with ``scores`` on, ``<discovery_prefix>/sensor/<node>_level/config`` (the
  sound level in dBFS from the scores topic).

Delivery. paho's network thread (``loop_start``) owns the socket and reconnects
with back-off, also when the broker is down at start-up. QoS 1 messages wait
in one ordered queue (bounded by ``queue_size``) and are handed to paho in
order, only while connected. Delivery is confirmed by PUBACK (``on_publish``),
which is also where the publish latency is measured.

Crash safety. Every caption and state message is first appended to a
write-ahead journal (``[mqtt] spool_file``, :mod:`daemon.sinks.journal`) and
leaves it only when its PUBACK arrives. A journal found at start-up is re-sent
first, in order; a caption a crash left open (a ``start`` without its ``end``)
is ended then, with an ``end`` event (``"interrupted": true``) and the ``OFF``
state, so the retained state never stays ``ON`` for a sound nobody hears.

Memory bounded by disk. With a journal, at most ``memory_bound``
(:data:`pipeline.params.MQTT_MEMORY_MESSAGES`) caption messages wait in
memory; during a long outage the newer ones are only written to the journal
and read back from it, in order, when there is room to send them, so the
process does not grow with the outage. ``queue_size`` then bounds the disk.

Only captions and states count against ``queue_size`` (status, discovery and
the states re-said after a reconnect are a handful per connection). When the
queue is full, a new caption is refused whole (its ``start`` and
``ON`` now, its ``end`` and ``OFF`` later), counted in ``dropped``; the ``end``
and ``OFF`` of a caption whose ``start`` was kept are always admitted, so the
retained per-class state matches the truth of what was delivered.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import re
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import MqttConfig
from daemon.exitcodes import EX_CONFIG
from daemon.sinks.base import SinkContext, SinkStats
from daemon.sinks.journal import Entry, Journal
from pipeline import captions, params
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)

def topic_name(name: str) -> str:
    """A class name as one MQTT topic level: ``Doorbell or knock`` -> ``Doorbell_or_knock``
    (the four default classes are unchanged)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def object_id(node: str, name: str) -> str:
    """A Home Assistant object id (letters, digits, ``_``, ``-``): ``<node>_<class>`` in lower case."""
    return f"{topic_name(node)}_{topic_name(name)}".lower()


SPOOL_NAME = "mqtt-spool.jsonl"
"""Under systemd, the journal is ``$STATE_DIRECTORY/mqtt-spool.jsonl``."""
ANNOUNCE_GRACE_S = 1.0
"""After ``online``, how long a (re)connect waits before saying its states and
discovery: an older daemon with the same node name answers within it."""
CONNACK_WARN_S = 10.0
"""A broker that took the TCP connection but has not answered CONNECT after
this long is reported (it may not be an MQTT broker, or be overloaded)."""
STOP_WAIT_S = 0.5
"""How long :meth:`MqttSink.close` waits for paho's network thread (it may be
stuck in a TCP connect for paho's whole connect timeout)."""


class _Msg(NamedTuple):
    """A QoS 1 message on its way: queued (``_held``), then in flight (``_unacked``)."""

    topic: str
    payload: str
    retain: bool
    origin: float
    seq: int = 0
    """Its journal entry (0: not journaled, e.g. ``online`` or discovery)."""
    published: float = 0.0

try:
    from importlib.metadata import version as _pkg_version

    _VERSION = _pkg_version("audiocap")
except Exception:  # not installed (source tree)
    _VERSION = "0.0.0"


class MqttSink:
    """Publishes to an MQTT broker with paho-mqtt 2.x.

    Args:
      config: the ``[mqtt]`` table (password already resolved).
      ctx: payload context (node, source, model, classes, captions).

    Raises:
      JournalError: (from :meth:`check`) the journal cannot be written.
    """

    kind = "mqtt"

    def __init__(self, config: MqttConfig, ctx: SinkContext) -> None:
        self.config = config
        self.ctx = ctx
        self.failed = False
        self.base = f"{config.prefix}/{ctx.node}"
        self.status_topic = f"{self.base}/status"
        self.onsets_topic = f"{self.base}/onsets"
        self._lock = threading.Condition()
        self._unacked: dict[int, _Msg] = {}  # mid -> message, in publish order
        self.spool_path = spool_path(config)
        self.journal = Journal(self.spool_path) if self.spool_path is not None else None
        self._early_acks: set[int] = set()  # PUBACKs that beat the registration of their mid
        self._qos0_mids: set[int] = set()  # QoS 0 messages paho has not written yet
        self._state = {name: False for name in ctx.classes}
        self._connected = False
        # QoS 1 messages wait here, in order, until the broker connection is up
        # and paho has re-sent everything older (see _publish).
        self._held: collections.deque[_Msg] = collections.deque()
        self.memory_bound = params.MQTT_MEMORY_MESSAGES
        """Journaled messages waiting in memory at most; the rest wait on disk (with a journal)."""
        self._spilled_states: set[str] = set()  # state topics among the messages on disk only
        self._read_back_failed = False
        self._announce_pending = False  # a (re)connect's states and discovery are still to be said
        self._flow_open = False
        self._in_hand = 0  # popped from _held, not yet registered in _unacked
        self._stop_pump = False
        self._pump_thread = threading.Thread(target=self._pump, name="audiocap-mqtt-pump", daemon=True)
        self._ever_connected = False
        self._outage_logged = False
        self._tcp_open_at: float | None = None
        self._connack_logged = False
        self._closing = False
        self._open_starts: dict[str, Entry] = {}  # event_id -> journaled start of a caption still open
        self._refused: set[str] = set()  # event_ids whose start did not fit: their end goes too
        self._latencies: collections.deque[float] = collections.deque(maxlen=params.METRICS_HISTORY)
        self._broker_latencies: collections.deque[float] = collections.deque(maxlen=params.METRICS_HISTORY)
        self.counters = {"published": 0, "acked": 0, "dropped": 0, "scores_skipped": 0, "connects": 0,
                         "resent": 0, "torn": 0, "interrupted": 0}
        # Who this process is, on its status and state messages (MQTT 5 user
        # properties): another daemon with the same node name is told apart.
        self.instance = uuid.uuid4().hex
        self.since = time.time()
        self.yielded = False
        """True once another audiocapd was found connected with this node name (see _check_instance)."""
        self.undelivered = 0
        """Caption messages (events, onsets, states) not delivered when the sink closed."""
        self.kept = 0
        """Of those, the ones kept in the journal for the next start."""
        self.on_fatal: Any = None
        """Called with ``(exit_code, message)`` when the sink can never deliver again (set by the service)."""
        self._v5 = config.protocol == "5"
        self._props = self._who(PacketTypes.PUBLISH) if self._v5 else None
        self.client = self._make_client()

    # --- set-up --------------------------------------------------------------------

    def check(self) -> None:
        """Start-up checks that need no broker: the journal must be writable.

        Raises:
          JournalError: one line naming the file and the reason.
        """
        if self.journal is not None:
            self.journal.check_writable()

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        # One client id per process: two daemons given one node name must not
        # knock each other off the broker (each connect would take over the
        # other's session); they find each other on the status topic instead.
        client = new_client(cfg, cfg.client_id or f"audiocap-{self.ctx.node}-{self.instance[:8]}")
        client.will_set(self.status_topic, "offline", qos=1, retain=True,
                        properties=self._who(PacketTypes.WILLMESSAGE) if self._v5 else None)
        # Our own queue bounds what waits (see _publish); paho only holds what is in flight.
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._tcp_open_at = time.monotonic()
        # A caption is an event then a state message, written back to back: with
        # Nagle's algorithm the second waits for the broker's delayed ACK (40 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
            pass

    def start(self) -> None:
        """Re-queues the journal of the last run, then connects in the background
        (never blocks on the broker).

        Raises:
          JournalError: the journal cannot be read or written.
        """
        self.check()
        self._load_journal()
        cfg = self.config
        _LOGGER.info("connecting to MQTT broker %s:%d (tls=%s, user %s, journal %s)", cfg.host, cfg.effective_port,
                     cfg.tls, cfg.username or "-", self.spool_path or "none: undelivered captions live in memory only")
        self._pump_thread.start()
        self.client.connect_async(cfg.host, cfg.effective_port, keepalive=cfg.keepalive_s,
                                  **({"clean_start": True} if self._v5 else {}))
        self.client.loop_start()

    # --- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._tcp_open_at = None
        if reason.is_failure:
            # A refused connection is not a connection (wrong password, not authorised...).
            if not self._outage_logged:
                _LOGGER.error("MQTT broker %s:%d refused the connection: %s; retrying with back-off%s",
                              self.config.host, self.config.effective_port, reason, _protocol_hint(reason))
                self._outage_logged = True
            return
        with self._lock:
            self._connected = True
            self.counters["connects"] += 1
            pending_states = self._pending_states()
        if self._outage_logged or not self._ever_connected:
            _LOGGER.info("connected to MQTT broker %s:%d", self.config.host, self.config.effective_port)
        self._ever_connected = True
        self._outage_logged = False
        self._connack_logged = False
        if self.config.discovery:
            client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        # Before our own status goes out: another daemon with this node name
        # then sees it, and we see its answer (see _check_instance).
        if self._v5:  # MQTT 3.1.1 carries no user properties: no one to tell apart
            client.subscribe([(self.status_topic, 1), (self._state_topic("+"), 1)])
            # Only `online` now; the states and discovery once an older daemon with
            # this node name has had time to answer it, so a newcomer that gives
            # way never flips the other's states (an automation would see OFF, ON).
            self._publish(self.status_topic, "online", qos=1, retain=True)
            connects = self.counters["connects"]
            with self._lock:
                self._announce_pending = True  # drain() waits for it
            timer = threading.Timer(ANNOUNCE_GRACE_S, self._announce_later, args=(connects,))
            timer.daemon = True
            timer.start()
        else:
            self._announce(pending_states)
        with self._lock:
            self._release_if_clear()

    def _pending_states(self) -> set[str]:
        """State topics with a message still to send (caller holds ``_lock``)."""
        pending = {m.topic for m in [*self._unacked.values(), *self._held] if "/state/" in m.topic}
        return pending | self._spilled_states if self._on_disk() else pending

    def _announce_later(self, connects: int) -> None:
        """The rest of a (re)connect's announcement, unless the connection changed or we gave way."""
        with self._lock:  # re-entrant: _publish takes it too
            if self._connected and not self.yielded and not self._closing and self.counters["connects"] == connects:
                self._announce(self._pending_states(), status=False)
            self._announce_pending = False
            self._lock.notify_all()

    def _announce(self, pending_states: set[str] | frozenset[str] = frozenset(), status: bool = True) -> None:
        """Says ``online``, the discovery configs and the current states.

        A restarted broker without persistence forgot retained states: they are
        said again, unless a newer state for that class is still queued (it
        would be overtaken by this one).
        """
        if status:
            self._publish(self.status_topic, "online", qos=1, retain=True)
        if self.config.discovery:
            self._publish_discovery()
        for name, on in list(self._state.items()):
            topic = self._state_topic(name)
            if topic not in pending_states:
                self._publish(topic, "ON" if on else "OFF", qos=1, retain=True)

    def _who(self, packet_type: int) -> Properties:
        """This process's identity as MQTT 5 user properties."""
        props = Properties(packet_type)
        props.UserProperty = [("audiocap-instance", self.instance), ("audiocap-since", f"{self.since:.6f}"),
                              ("audiocap-host", socket.gethostname()), ("audiocap-pid", str(os.getpid()))]
        return props

    def _check_instance(self, msg: mqtt.MQTTMessage) -> None:
        """Another daemon using this node name: the one that started later gives way.

        Every status and state message carries its sender's instance id and
        start time. A message from another instance that arrives live (not a
        retained one from before we subscribed: that may be a dead process's)
        means two daemons are connected as one node. The older one says its
        status and states again (the newer one's overwrote them); the newer
        one, on hearing the older, logs one line, disconnects without a last
        will and stops (exit 78): the retained status stays the older one's,
        true. A dead predecessor's last will (``offline``) is answered the same
        way, so the status is ours again.
        """
        if msg.retain or self.yielded or self._closing:
            return
        props = dict(getattr(getattr(msg, "properties", None), "UserProperty", None) or [])
        other = props.get("audiocap-instance")
        if not other or other == self.instance:
            return
        try:
            since = float(props.get("audiocap-since", "inf"))
        except ValueError:
            since = float("inf")
        older = (since, other) < (self.since, self.instance)
        if msg.topic != self.status_topic:  # a state: ours was overwritten, say it again
            name = next((n for n in self._state if self._state_topic(n) == msg.topic), None)
            if not older and name is not None:
                self._publish(msg.topic, "ON" if self._state[name] else "OFF", qos=1, retain=True)
        elif older and msg.payload == b"online":
            self._give_way(props)
        else:  # a newer daemon said online, or a dead one's last will said offline
            self._announce()

    def _give_way(self, props: dict[str, str]) -> None:
        self.yielded = True
        where = f"{props.get('audiocap-host', '?')}, pid {props.get('audiocap-pid', '?')}"
        message = (f"another audiocapd ({where}) is connected to MQTT broker {self.config.host}:"
                   f"{self.config.effective_port} as node '{self.ctx.node}'; give each a unique [daemon] node "
                   "name (or --node); this one stops")
        _LOGGER.error("%s", message)
        with self._lock:
            self._flow_open = False
            self._lock.notify_all()
        # A clean DISCONNECT: no last will, so the other one's status stays online.
        self.client.disconnect()
        if self.on_fatal is not None:
            self.on_fatal(EX_CONFIG, message)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is the reason.
        exc = sys.exc_info()[1]
        self._tcp_open_at = None
        if self._outage_logged:
            return
        self._outage_logged = True
        host, port = self.config.host, self.config.effective_port
        if isinstance(exc, ssl.SSLError):
            _LOGGER.error("TLS handshake with MQTT broker %s:%d failed: %s; retrying with back-off, captions are "
                          "queued", host, port, _reason(exc))
        else:
            _LOGGER.warning("cannot reach MQTT broker %s:%d (%s); retrying with back-off, captions are queued%s",
                            host, port, _reason(exc) if exc is not None else "connection failed",
                            connect_hint(self.config, exc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        opened, self._tcp_open_at = self._tcp_open_at, None
        with self._lock:
            was = self._connected
            self._connected = False
            self._flow_open = False
        if self._closing or self.yielded:
            return
        if not was:
            if opened is not None and not self._outage_logged:
                _LOGGER.warning("MQTT broker %s:%d took the TCP connection but never answered CONNECT (%s); "
                                "retrying with back-off, captions are queued%s",
                                self.config.host, self.config.effective_port, reason, connect_hint(self.config, None))
                self._outage_logged = True
            return
        if not self._outage_logged:
            _LOGGER.warning("lost the MQTT broker (%s); reconnecting with back-off, captions are queued", reason)
            self._outage_logged = True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        now = time.time()
        with self._lock:
            item = self._unacked.pop(mid, None)
            if item is not None:
                self._ack(item, now)
                self._release_if_clear()
            elif mid in self._qos0_mids:
                self._qos0_mids.discard(mid)
            else:
                if len(self._early_acks) > 10000:  # only unregistered mids (e.g. the final offline)
                    self._early_acks.clear()
                self._early_acks.add(mid)
        if item is not None and item.seq and self.journal is not None:
            self.journal.maybe_compact()

    def _ack(self, item: _Msg, now: float) -> None:
        """Accounts one PUBACK (caller holds ``_lock``)."""
        self.counters["acked"] += 1
        if item.seq and self.journal is not None:
            self.journal.ack(item.seq)
        if item.origin > 0:
            self._latencies.append(now - item.origin)
            self._broker_latencies.append(now - item.published)
        self._lock.notify_all()  # the pump (a place in flight) and drain (when nothing is left)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(f"{self.base}/"):
            self._check_instance(msg)
            return
        if msg.topic == f"{self.config.discovery_prefix}/status" and msg.payload == b"online":
            _LOGGER.info("Home Assistant came online: re-sending discovery")
            self._publish_discovery()
            for name, on in list(self._state.items()):
                self._publish(self._state_topic(name), "ON" if on else "OFF", qos=1, retain=True)

    # --- publishing ------------------------------------------------------------------------------

    def _state_topic(self, name: str) -> str:
        return f"{self.base}/state/{topic_name(name)}"

    def _publish(self, topic: str, payload: str, qos: int, retain: bool = False, origin: float = 0.0) -> bool:
        """Publishes one message; QoS 1 ones keep their order across reconnects.

        paho marks itself connected before it re-sends what it queued, so a
        message handed to it at that instant would overtake older ones. QoS 1
        messages therefore go through our own FIFO, which one thread
        (:meth:`_pump`) hands to paho in order, only while the connection is up
        and nothing from before the last reconnect is left unacknowledged.
        """
        if qos == 0:
            return self._hand(_Msg(topic, payload, retain, origin), qos)
        with self._lock:
            # Status, discovery and re-said states: a handful per (re)connect,
            # sent once the flow opens, so they never wait for room.
            self._queue(_Msg(topic, payload, retain, origin))
            return True

    def _room(self) -> int:
        """Free places in the queue (caller holds ``_lock``)."""
        return self.config.queue_size - len(self._held) - len(self._unacked) - self._in_hand - self._on_disk()

    def _on_disk(self) -> int:
        return self.journal.on_disk if self.journal is not None else 0

    def _queue(self, msg: _Msg) -> None:
        """Appends to the FIFO (caller holds ``_lock``)."""
        self._held.append(msg)
        self._lock.notify_all()

    def _journaled(self, topic: str, payload: str, retain: bool, origin: float) -> Entry | None:
        """Journals a caption/state message, then queues it (caller holds ``_lock``); past
        ``memory_bound`` it waits on disk only, for :meth:`_refill`."""
        if self.journal is None:
            self._queue(_Msg(topic, payload, retain, origin))
            return None
        entry = self.journal.append(topic, payload, retain, on_disk=len(self._held) >= self.memory_bound)
        if self.journal.last_on_disk:
            if "/state/" in topic:
                self._spilled_states.add(topic)
            self._lock.notify_all()
        else:
            self._queue(_Msg(topic, payload, retain, origin, entry.seq))
        return entry

    def _refill(self) -> None:
        """Reads messages waiting on disk back into the queue, oldest first (caller holds ``_lock``)."""
        if not self._on_disk() or len(self._held) > self.memory_bound // 2:
            return
        try:
            entries = self.journal.read_back(self.memory_bound - len(self._held))  # type: ignore[union-attr]
        except OSError as exc:  # they stay in the file: retried, and loaded at the next start
            if not self._read_back_failed:
                _LOGGER.error("cannot read the journal %s back (%s); %d message(s) wait there", self.spool_path,
                              exc.strerror or exc, self._on_disk())
            self._read_back_failed = True
            return
        self._read_back_failed = False
        for e in entries:
            self._held.append(_Msg(e.topic, e.payload, e.retain, 0.0, e.seq))
        if not self._on_disk():
            self._spilled_states.clear()


    def _release_if_clear(self) -> None:
        """Opens the flow once connected with nothing older in flight (caller holds ``_lock``)."""
        if self._connected and not self._unacked and not self._flow_open:
            self._flow_open = True
            self._lock.notify_all()

    def _pump(self) -> None:
        """The one thread that hands QoS 1 messages to paho, in FIFO order.

        It never holds ``_lock`` while calling paho: paho runs its callbacks
        (which take ``_lock``) with its own mutex held. It also notices a
        broker that took the TCP connection but does not answer CONNECT.
        """
        while True:
            with self._lock:
                while not self._stop_pump and not (self._flow_open and self._held and self._window_open()):
                    if self._flow_open:
                        self._refill()
                        if self._held and self._window_open():
                            break
                    self._lock.wait(0.5)
                    self._check_connack()
                if self._stop_pump:
                    return
                msg = self._held.popleft()
                self._in_hand += 1
                self._refill()
            try:
                self._hand(msg, 1)
            finally:
                with self._lock:
                    self._in_hand -= 1
                    self._lock.notify_all()

    def _window_open(self) -> bool:
        """Room in flight (caller holds ``_lock``): what paho has not had acknowledged
        stays bounded, so messages wait in our queue (and on disk), not in paho's."""
        return len(self._unacked) + self._in_hand < params.MQTT_INFLIGHT_WINDOW

    def _check_connack(self) -> None:
        opened = self._tcp_open_at
        if opened is None or self._connack_logged or time.monotonic() - opened < CONNACK_WARN_S:
            return
        self._connack_logged = True
        self._outage_logged = True
        _LOGGER.warning("MQTT broker %s:%d took the TCP connection %.0f s ago but has not answered CONNECT "
                        "(not an MQTT broker, or overloaded?); captions are queued%s",
                        self.config.host, self.config.effective_port, time.monotonic() - opened,
                        connect_hint(self.config, None))

    def _count_drop(self, topic: str, n: int = 1) -> None:
        self.counters["dropped"] += n
        if self.counters["dropped"] == n or self.counters["dropped"] // 1000 != (self.counters["dropped"] - n) // 1000:
            _LOGGER.error("MQTT queue full (%d messages): dropped %d message(s) so far, latest on %s",
                          self.config.queue_size, self.counters["dropped"], topic)

    def _hand(self, msg: _Msg, qos: int) -> bool:
        """Hands one message to paho; QoS 1 ones are tracked until PUBACK."""
        published = time.time()
        try:
            info = self.client.publish(msg.topic, msg.payload, qos=qos, retain=msg.retain,
                                       properties=self._props if msg.retain else None)
        except ValueError as exc:  # a payload paho refuses: never retry it
            _LOGGER.error("MQTT refused a message on %s: %s", msg.topic, exc)
            return False
        if qos == 0:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    if len(self._qos0_mids) > 10000:  # lost on a disconnect; forget them
                        self._qos0_mids.clear()
                    self._qos0_mids.add(info.mid)
            return True
        self.counters["published"] += 1
        msg = msg._replace(published=published)
        with self._lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._ack(msg, time.time())
            else:
                self._unacked[info.mid] = msg
        return True

    def discovery_configs(self) -> dict[str, dict[str, Any]]:
        """Home Assistant discovery: config topic -> config, for every entity of this node."""
        device = {
            "identifiers": [f"audiocap_{self.ctx.node}"],
            "name": f"audiocap {self.ctx.node}",
            "manufacturer": "audiocap",
            "model": self.ctx.model,
            "sw_version": _VERSION,
        }
        common = {
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        dp = self.config.discovery_prefix
        out: dict[str, dict[str, Any]] = {}
        for name in self.ctx.classes:
            oid = object_id(self.ctx.node, name)
            out[f"{dp}/binary_sensor/{oid}/config"] = {
                "name": self.ctx.captions.get(name, name).strip("[]") or name,
                "unique_id": f"audiocap_{oid}",
                "object_id": f"audiocap_{oid}",
                "state_topic": self._state_topic(name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "sound",
                **({"icon": "mdi:alarm-light"} if name in self.ctx.urgent else {}),
                **common,
            }
        oid = object_id(self.ctx.node, "sounds")
        out[f"{dp}/event/{oid}/config"] = {
            "name": "Sound started",
            "unique_id": f"audiocap_{oid}",
            "object_id": f"audiocap_{oid}",
            "state_topic": self.onsets_topic,
            "event_types": list(self.ctx.classes),
            "icon": "mdi:ear-hearing",
            **common,
        }
        if self.config.scores:
            oid = object_id(self.ctx.node, "level")
            out[f"{dp}/sensor/{oid}/config"] = {
                "name": "Sound level",
                "unique_id": f"audiocap_{oid}",
                "object_id": f"audiocap_{oid}",
                "state_topic": f"{self.base}/scores",
                # null (a replay of embeddings has no audio) renders "None": the state becomes unknown.
                "value_template": "{{ value_json.level_dbfs }}",
                "unit_of_measurement": "dBFS",
                "state_class": "measurement",
                "suggested_display_precision": 0,
                "icon": "mdi:volume-high",
                **common,
            }
        return out

    def _publish_discovery(self) -> None:
        for topic, payload in self.discovery_configs().items():
            self._publish(topic, captions.dumps(payload), qos=1, retain=True)

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float,
                  level_dbfs: float | None = None) -> None:
        """Publishes the window's scores and level (QoS 0; skipped while disconnected)."""
        if not self.config.scores:
            return
        if not self._connected:
            self.counters["scores_skipped"] += 1
            return
        payload = captions.scores_payload(t_start, t_end, self.ctx.classes, scores, self.ctx.node, self.ctx.model,
                                          level_dbfs)
        self._publish(f"{self.base}/scores", captions.dumps(payload), qos=0)

    def on_event(self, event: CaptionEvent) -> None:
        """Journals and queues the caption event and the class state (QoS 1).

        Returns at once (a journal append is one ``write(2)``); delivery is the
        pump's. A caption whose ``start`` does not fit is refused whole.
        """
        body = captions.event_payload(event, self.ctx.node, self.ctx.source, self.ctx.model)
        payload = captions.dumps(body)
        on = event.type == "start"
        events_topic = f"{self.base}/events"
        with self._lock:
            if on and self._room() < 3:
                self._refused.add(event.event_id)
                self._count_drop(events_topic, 2)
                return
            if not on and event.event_id in self._refused:
                self._refused.discard(event.event_id)
                self._count_drop(events_topic, 2)
                return
            # The end and OFF of a kept start are admitted even over the bound
            # (at most one per class): dropping them would leave a class ON.
            entry = self._journaled(events_topic, payload, False, event.origin)
            self._state[event.label] = on
            self._journaled(self._state_topic(event.label), "ON" if on else "OFF", True, 0.0)
            if on:
                self._journaled(self.onsets_topic, captions.dumps(onset_payload(body)), False, 0.0)
            if self.journal is not None:
                if on and entry is not None:
                    self._open_starts[event.event_id] = entry
                    self.journal.keep(entry)
                elif not on and event.event_id in self._open_starts:
                    self.journal.release([self._open_starts.pop(event.event_id).seq])

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """Publishes the health message (QoS 0)."""
        if self._connected:
            self._publish(f"{self.base}/metrics", captions.dumps(metrics), qos=0)

    # --- shutdown and health -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._connected

    def queue_depth(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker."""
        with self._lock:
            return len(self._unacked) + len(self._held) + self._in_hand + self._on_disk()

    def drain(self, timeout: float) -> bool:
        """Waits until every QoS 1 message was acknowledged, or ``timeout`` s.

        Returns:
          True when nothing is left unacknowledged.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while self._unacked or self._held or self._in_hand or self._on_disk() or self._announce_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
            left_over = len(self._unacked) + len(self._held) + self._in_hand + self._on_disk()
        if left_over:
            _LOGGER.warning("%d MQTT message(s) were not acknowledged within %.1f s", left_over, timeout)
        return left_over == 0

    def close(self, timeout: float = 0.5) -> None:
        """Publishes ``offline`` (retained), disconnects, stops the network thread, closes the journal.

        Never waits long for paho: its network thread may be stuck in a TCP
        connect (paho's connect timeout), and the stop must take under 2 s.
        """
        self._closing = True
        if self._connected and not self.yielded:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True, properties=self._props)
            try:
                info.wait_for_publish(timeout=timeout)
            except (RuntimeError, ValueError):  # disconnected meanwhile / queue refused
                pass
        with self._lock:
            self._stop_pump = True
            self._lock.notify_all()
        if self._pump_thread.is_alive():
            self._pump_thread.join(timeout=2.0)
        stopper = threading.Thread(target=self._stop_network, name="audiocap-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_WAIT_S)
        if stopper.is_alive():
            _LOGGER.debug("paho's network thread is still connecting; leaving it")
        self._close_journal()
        _LOGGER.info("MQTT closed: %d published, %d acknowledged, %d dropped",
                     self.counters["published"], self.counters["acked"], self.counters["dropped"])

    def _stop_network(self) -> None:
        try:
            self.client.disconnect()
            self.client.loop_stop()
        except Exception as exc:  # noqa: BLE001 - shutting down; nothing to recover
            _LOGGER.debug("stopping paho: %s", exc)

    # --- the journal: captions survive a crash -----------------------------------------------------

    def _close_journal(self) -> None:
        with self._lock:
            self.undelivered = self._on_disk() + sum(1 for m in [*self._unacked.values(), *self._held]
                                                     if m.seq or _is_caption(m.topic))
        if self.journal is None:
            if self.undelivered:
                _LOGGER.error("%d caption/state message(s) undelivered at exit and no journal is set "
                              "([mqtt] spool_file): they are lost", self.undelivered)
            return
        self.kept = self.journal.pending
        self.journal.close()
        if self.kept:
            _LOGGER.warning("%d caption/state message(s) not delivered: kept in %s for the next start",
                            self.kept, self.spool_path)

    def _load_journal(self) -> None:
        """Queues what the last run did not deliver, ahead of anything new, and
        ends the captions it left open (a crash)."""
        if self.journal is None:
            return
        got = self.journal.recover(self.memory_bound)
        self.counters["torn"] = got.torn
        open_starts = []
        for e in got.open_starts:
            try:
                open_starts.append((e, json.loads(e.payload)))
            except ValueError:
                continue
        with self._lock:
            for e in got.pending:
                self._queue(_Msg(e.topic, e.payload, e.retain, 0.0, e.seq))
            self._spilled_states = set(got.spilled_states)
            for e, ev in open_starts:
                self._end_interrupted(e, ev, got.last_write)
        resent = len(got.pending) + got.on_disk
        self.counters["resent"] = resent
        self.counters["interrupted"] = len(open_starts)
        if resent or got.torn or open_starts:
            _LOGGER.info("journal %s: re-sending %d message(s) from the last run first (%d torn line(s) skipped, "
                         "%d caption(s) left open by a crash ended)", self.spool_path, resent, got.torn,
                         len(open_starts))

    def _end_interrupted(self, start: Entry, ev: dict[str, Any], last_write: float) -> None:
        """Queues the ``end`` and ``OFF`` of a caption a crash left open (caller holds ``_lock``).

        Its end time is the last sign of life of the run that made it (the
        journal's last write), never before its start.
        """
        try:
            t_start = datetime.fromisoformat(str(ev["start"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            t_start = start.t
        ev = dict(ev, type="end", end=captions.iso_utc(max(last_write, t_start)), interrupted=True)
        base = start.topic[: -len("events")]
        self._journaled(start.topic, captions.dumps(ev), False, 0.0)
        self._journaled(f"{base}state/{topic_name(str(ev.get('label', '')))}", "OFF", True, 0.0)
        self.journal.release([start.seq])  # type: ignore[union-attr]

    def latencies(self) -> list[float]:
        """Recent latencies from the end of the audio block behind a caption event to its PUBACK, seconds."""
        with self._lock:
            return list(self._latencies)

    def broker_latencies(self) -> list[float]:
        """Recent latencies from handing a caption event to paho to its PUBACK, seconds."""
        with self._lock:
            return list(self._broker_latencies)

    def stats(self) -> SinkStats:
        """Counters for the metrics message."""
        journal = dict(self.journal.counters) if self.journal is not None else {}
        return SinkStats(
            self.kind,
            delivered=self.counters["acked"],
            queued=self.queue_depth(),
            dropped=self.counters["dropped"],
            connected=self._connected,
            latencies_s=tuple(self.latencies()),
            undelivered=self.undelivered,
            kept=self.kept,
            extra={**{k: v for k, v in self.counters.items() if k not in ("acked", "dropped")},
                   **{f"journal_{k}": v for k, v in journal.items()}},
        )


def onset_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The ``onsets`` message of a caption start: Home Assistant's event entity
    fires ``event_type`` and keeps the other keys as the event's attributes."""
    keys = ("event_id", "caption", "urgent", "score", "start", "level_dbfs", "node", "source")
    return {"event_type": event["label"], **{k: event.get(k) for k in keys}}


def new_client(cfg: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho client speaking ``[mqtt] protocol``, with the user, password and TLS ``[mqtt]`` says."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311)
    credentials(client, cfg)
    return client


def credentials(client: mqtt.Client, cfg: MqttConfig) -> None:
    """User, password and TLS as ``[mqtt]`` says."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    if cfg.tls:
        client.tls_set(
            ca_certs=cfg.ca_file or None,
            certfile=cfg.cert_file or None,
            keyfile=cfg.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(cfg.tls_insecure)


def probe_broker(cfg: MqttConfig, timeout: float = CONNACK_WARN_S) -> str | None:
    """Connects once as the daemon would (address, TLS, credentials) and disconnects.

    Returns:
      ``None`` when the broker accepted the connection, else one line saying why not.
    """
    host, port = cfg.host, cfg.effective_port
    client = new_client(cfg, f"audiocap-check-{uuid.uuid4().hex[:8]}")
    answer: list[Any] = []
    client.on_connect = lambda c, u, f, reason, p: answer.append(reason)
    try:
        client.connect(host, port, keepalive=cfg.keepalive_s)
    except ssl.SSLError as exc:
        return f"TLS handshake with MQTT broker {host}:{port} failed: {_reason(exc)}"
    except OSError as exc:
        return f"cannot reach MQTT broker {host}:{port} ({_reason(exc)}){connect_hint(cfg, exc)}"
    deadline = time.monotonic() + timeout
    closed = False
    try:
        while not answer and not closed and time.monotonic() < deadline:
            closed = client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS
    finally:
        client.disconnect()
    if not answer:
        what = "closed it" if closed else f"did not answer within {timeout:.0f} s"
        return f"{host}:{port} took the TCP connection but {what} instead of answering MQTT's CONNECT" + \
            connect_hint(cfg, None)
    if answer[0].is_failure:
        return f"MQTT broker {host}:{port} refused the connection: {answer[0]}{_protocol_hint(answer[0])}"
    return None


def connect_hint(cfg: MqttConfig, exc: BaseException | None) -> str:
    """What to try when a connection fails, for the README's live steps ("" when nothing useful).

    ``exc`` is the connection error, or ``None`` for a peer that took the TCP
    connection but never answered CONNECT (what a websockets listener does).
    """
    port = cfg.effective_port
    plain = (f"the daemon speaks plain MQTT: {params.MQTT_PORT} for a system broker, {params.DISPLAY_MQTT_PORT} "
             "for display/mosquitto-local.conf (--mqtt-port)")
    if port == params.DISPLAY_WS_PORT:
        return f"; {port} is the display's websockets port, and {plain}"
    if exc is None:
        return f"; if {port} is a websockets port (the display's is {params.DISPLAY_WS_PORT}): {plain}"
    if isinstance(exc, ConnectionRefusedError) and cfg.host in ("localhost", "127.0.0.1", "::1"):
        local = (f"`mosquitto -c display/mosquitto-local.conf` (from the checkout) listens on "
                 f"{params.DISPLAY_MQTT_PORT}")
        if port == params.MQTT_PORT:
            return (f"; no broker on this machine? Install one (`sudo apt install mosquitto`), or {local}: "
                    f"add --mqtt-port {params.DISPLAY_MQTT_PORT}")
        return f"; is mosquitto running? {local}"
    return ""


def _protocol_hint(reason: Any) -> str:
    """For a broker that refuses MQTT 5 (older than mosquitto 1.6)."""
    if "protocol version" in str(reason).lower():
        return '; a broker without MQTT 5? set [mqtt] protocol = "3.1.1"'
    return ""


def _is_caption(topic: str) -> bool:
    """A caption's message (event, onset, state), as opposed to status, discovery, scores, metrics."""
    return topic.endswith(("/events", "/onsets")) or "/state/" in topic


def spool_path(config: MqttConfig) -> Path | None:
    """The journal file: ``[mqtt] spool_file``, else ``$STATE_DIRECTORY/mqtt-spool.jsonl``
    under systemd, else none (messages then wait in memory only)."""
    if config.spool_file:
        return Path(config.spool_file)
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / SPOOL_NAME if state else None


def _reason(exc: BaseException) -> str:
    """One line saying why a connection failed (certificate, host name, refused, timed out...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc}"
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0]
