"""``audiocapd``: the command line of the captioning daemon.

Exit codes (sysexits): 0 clean stop; 2 bad command line; 65 a file or replay
failed mid-way; 66 input file or replay folder missing; 69 audio device not
found, PortAudio missing or TF-Hub unreachable (may come back: systemd
retries); 73 an output file or the journal cannot be created; 75 a run that
ended with its file or replay did not deliver every caption; 78 bad
configuration, a model/PCA/classifier path that is wrong, or another
audiocapd connected to the broker with this node name; 1 an unexpected failure.

SIGHUP re-executes the daemon (same PID, same arguments) once the new
configuration has been checked and everything accepted was delivered or
journaled.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Sequence

from daemon.exitcodes import ExitError

_LOGGER = logging.getLogger("audiocapd")

# One worker thread does the numerics block by block. A multi-threaded BLAS
# turns the resampler's small matrix products into thread hand-offs: measured
# on a busy 2-core box, 100 ms instead of 1 ms per second of 44.1 kHz audio.
# Set before numpy is imported (it is imported lazily below).
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")



def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audiocap")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags override the TOML file)."""
    p = argparse.ArgumentParser(
        prog="audiocapd",
        description="Live audio captions: microphone/file/replay -> VGGish -> classifier -> MQTT/stdout/subtitles.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default /etc/audiocap/audiocap.toml if present)")
    p.add_argument("--source", metavar="SPEC", help="mic, mic:DEVICE, file:PATH or replay:DIR")
    p.add_argument("--sink", metavar="SPEC", action="append",
                   help="mqtt, stdout, vtt:OUT.vtt or srt:OUT.srt (repeat for several)")
    p.add_argument("--node", help="node name in topics and payloads")
    p.add_argument("--mqtt-host", metavar="H")
    p.add_argument("--mqtt-port", metavar="P", type=int)
    p.add_argument("--mqtt-user", metavar="U", help="user name (password: $AUDIOCAP_MQTT_PASSWORD or password_file)")
    p.add_argument("--pace", choices=("realtime", "fast"), help="file/replay pace")
    p.add_argument("--exit-at-end", action="store_true", default=None,
                   help="exit when a file/replay source ends, after delivering everything")
    p.add_argument("--vggish", metavar="SOURCE", help="TF-Hub handle, SavedModel dir, TF1 checkpoint or .tflite")
    p.add_argument("--pca", metavar="FILE", help="vggish_pca_params.npz")
    p.add_argument("--classifier", metavar="DIR", help="classifier bundle directory (default: bundled)")
    p.add_argument("--runtime", choices=("tensorflow", "litert"))
    p.add_argument("--device", metavar="DEV", help="input device for --source mic (name substring or index)")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.add_argument("--check-config", action="store_true",
                   help="check what start-up checks (configuration, source file, model files and their hashes, "
                        "output files), print the effective configuration, exit (78 naming any problem)")
    p.add_argument("--connect", action="store_true",
                   help="with --check-config: also open the audio device and connect to the broker")
    p.add_argument("--list-devices", action="store_true", help="print the audio input devices and exit")
    p.add_argument("--retire-node", metavar="NAME",
                   help="clear node NAME's retained status, states and Home Assistant discovery on the broker "
                        "([mqtt] of the configuration), so displays and Home Assistant forget it; exit")
    p.add_argument("--version", action="version", version=f"audiocapd {_version()}")
    return p


_FLAG_KEYS = {
    "source": ("daemon", "source", "--source"),
    "sink": ("daemon", "sinks", "--sink"),
    "node": ("daemon", "node", "--node"),
    "pace": ("daemon", "pace", "--pace"),
    "exit_at_end": ("daemon", "exit_at_end", "--exit-at-end"),
    "mqtt_host": ("mqtt", "host", "--mqtt-host"),
    "mqtt_port": ("mqtt", "port", "--mqtt-port"),
    "mqtt_user": ("mqtt", "username", "--mqtt-user"),
    "vggish": ("model", "vggish", "--vggish"),
    "pca": ("model", "pca", "--pca"),
    "classifier": ("model", "classifier", "--classifier"),
    "runtime": ("model", "runtime", "--runtime"),
    "device": ("mic", "device", "--device"),
}


def overrides_from_args(args: argparse.Namespace) -> dict[tuple[str, str], tuple[Any, str]]:
    """Flags given on the command line as config overrides."""
    out: dict[tuple[str, str], tuple[Any, str]] = {}
    for attr, (section, key, flag) in _FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            out[(section, key)] = (value, flag)
    if args.debug:
        out[("daemon", "log_level")] = ("debug", "--debug")
    return out


def _setup_logging(level: str) -> None:
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    # journald stamps every line itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr, force=True)


def _fail(message: str, code: int) -> int:
    # One line, whatever the logging configuration: this is what a user reads.
    print(f"audiocapd: error: {message}", file=sys.stderr, flush=True)
    return code


def _retire(config: Any, node: str) -> int:
    from daemon.config import EX_CONFIG, sanitize_node
    from daemon.retire import retire_node

    if not node or sanitize_node(node) != node:
        return _fail(f"--retire-node: {node!r} is not a node name (letters, digits, _ and -)", EX_CONFIG)
    try:
        done = retire_node(config.mqtt, node)
    except ExitError as exc:
        return _fail(str(exc), exc.exit_code)
    where = f"MQTT broker {config.mqtt.host}:{config.mqtt.effective_port}"
    if not done.topics:
        others = ", ".join(done.other_nodes) or "none"
        print(f"nothing retained for node '{node}' on {where} (nodes there: {others})")
    else:
        print(f"retired node '{node}' on {where}: cleared {len(done.topics)} retained topic(s)")
        for topic in done.topics:
            print(f"  {topic}")
    return 0


RELOAD = -1
"""What :func:`run` returns when the daemon stopped for a SIGHUP reload."""


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the daemon; returns the exit code (or :data:`RELOAD`)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _setup_logging("debug" if args.debug else "info")

    from daemon import sources

    if args.list_devices:
        try:
            print(sources.format_devices(sources.input_devices()))
        except sources.SourceError as exc:
            return _fail(str(exc), exc.exit_code)
        return 0

    from daemon.config import EX_CONFIG, ConfigError, describe, load_config, to_toml

    try:
        config = load_config(args.config, overrides_from_args(args))
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    _setup_logging(config.daemon.log_level)
    if args.check_config:
        from daemon.checks import check_config

        problems = check_config(config, connect=args.connect)
        for problem in problems:
            _fail(problem.message, problem.exit_code)
        if problems:
            return problems[0].exit_code
        print(to_toml(config))
        return 0
    if args.connect:
        return _fail("--connect goes with --check-config", 2)
    if args.retire_node is not None:
        return _retire(config, args.retire_node)
    # A full disk under RLIMIT_FSIZE must be a failed write the journal
    # handles, not a signal that kills the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    source = sources.make_source(config)
    try:
        source.open()
    except sources.SourceError as exc:
        return _fail(str(exc), exc.exit_code)

    from daemon.sinks import SinkContext, check_sinks, make_sinks

    try:  # files and the journal directory, before seconds go into loading models
        check_sinks(config)
    except ExitError as exc:
        return _fail(str(exc), exc.exit_code)

    from daemon.models import ModelError, build_models

    try:
        models = build_models(config.model, need_embedder=source.kind == "audio")
    except ModelError as exc:
        return _fail(str(exc), exc.exit_code)

    from daemon.chain import CaptionChain
    from daemon.models import build_tracker

    try:
        tracker = build_tracker(models, config.events)
    except ValueError as exc:
        where = config.path or "the configuration"
        return _fail(f"{where}: [events] {exc}", EX_CONFIG)
    make_embedder = models.make_embedder if source.kind == "audio" else None
    chain = CaptionChain(models.classifier, tracker, make_embedder)
    ctx = SinkContext(
        node=config.daemon.node,
        source=source.name,
        model=models.model_id,
        classes=models.classes,
        captions=tracker.caption_texts(),
        urgent=tracker.urgent_classes(),
    )
    try:
        sinks = make_sinks(config, ctx)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a bad CA/cert/key file
        where = config.path or "the configuration"
        return _fail(f"{where}: [mqtt] cannot set up TLS: {exc}", EX_CONFIG)

    from daemon.service import Service

    def check_reload() -> str | None:
        try:
            load_config(args.config, overrides_from_args(args))
        except ConfigError as exc:
            return str(exc)
        return None

    thresholds = ", ".join(f"{c} {a:.2f}/{b:.2f}" for c, (a, b) in tracker.thresholds().items())
    service = Service(config, source, chain, sinks, check_reload=check_reload,
                      description=f"{describe(config)} model={models.model_id} scoring={tracker.scoring} "
                                  f"lookahead={chain.latency_seconds:.2f}s thresholds(on/off)={thresholds}")
    code = service.run()
    return RELOAD if service.reload_requested and code == 0 else code


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``audiocapd``)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        code = run(argv)
    except KeyboardInterrupt:  # Ctrl-C before the service installed its handler
        code = 130
    except BrokenPipeError:  # e.g. `audiocapd --check-config | head`
        code = 0
    except ExitError as exc:
        code = _fail(str(exc), exc.exit_code)
    except Exception as exc:  # a bug: one line for the user, the traceback with --debug
        if debug:
            _LOGGER.exception("unexpected failure")
        text = str(exc).strip().splitlines()
        code = _fail(f"unexpected failure: {type(exc).__name__}: {text[0] if text else ''} "
                     "(run with --debug for the traceback)", 1)
    # Everything is delivered, written and closed by now. Tearing down TensorFlow
    # and a loaded VGGish takes 5-10 s at interpreter exit, which would break the
    # "gone within 2 s of SIGTERM" promise, so leave without it.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    logging.shutdown()
    if code == RELOAD:
        # Same PID (systemd keeps tracking it), same command line, fresh
        # configuration and models. Our descriptors are close-on-exec.
        try:
            os.execv(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, "-m", "daemon", *sys.argv[1:]])))
        except OSError as exc:
            code = _fail(f"cannot re-execute for the reload: {exc.strerror or exc}", 1)
    os._exit(code)


if __name__ == "__main__":
    main()
