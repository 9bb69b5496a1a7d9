"""Moved to :mod:`daemon.sinks.mqtt`; kept so that older imports go on working."""

from daemon.sinks.mqtt import SPOOL_NAME, MqttSink  # noqa: F401  (re-exported)
