"""Checks Home Assistant MQTT discovery configs with Home Assistant's own schemas.

Runs in a virtualenv holding ``homeassistant`` (scripts/setup makes
``.venv-homeassistant``), not in audiocap's environment. Reads
``{"<discovery topic>": {config}, ...}`` as JSON on stdin and prints one JSON
object: per topic, ``ok`` or the schema's error, and the keys the discovery
schema would silently drop (Home Assistant removes unknown keys from discovery
payloads, so a misspelt key would otherwise pass unnoticed).
"""

from __future__ import annotations

import importlib
import json
import sys


def check(topic: str, config: dict) -> dict:
    platform = topic.split("/")[-3]
    module = importlib.import_module(f"homeassistant.components.mqtt.{platform}")
    out: dict = {"platform": platform}
    try:
        kept = module.DISCOVERY_SCHEMA(dict(config))
    except Exception as exc:  # voluptuous.Invalid and friends
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["dropped"] = sorted(set(config) - set(kept))
    try:  # the YAML schema refuses unknown keys outright
        module.PLATFORM_SCHEMA_MODERN(dict(config))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["ok"] = not out["dropped"]
    return out


def main() -> int:
    from homeassistant.const import __version__

    configs = json.load(sys.stdin)
    print(json.dumps({"homeassistant": __version__, "results": {t: check(t, c) for t, c in configs.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
