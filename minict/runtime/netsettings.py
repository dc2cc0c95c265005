"""The network a container asked for (`--network`, `-p`), checked, and kept in its bundle.

`run` parses and checks the options and records them in network.json, so
`start` sets up the same network again (network.py does the setting up).
"""

import json
import re

from minict import fsutil, store
from minict.errors import NetworkError
from minict.runtime import etc_files

MODES = ("host", "none", "bridge")
_PUBLISH = re.compile(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?\Z")


def parse_publish(text: str) -> dict:
    """Parse `HOSTPORT:CONTAINERPORT[/tcp|udp]`; return {"host", "container", "protocol"}."""
    match = _PUBLISH.match(text)
    if not match or not all(1 <= int(p) <= 65535 for p in match.group(1, 2)):
        raise NetworkError(f"invalid published port {text!r}: use HOSTPORT:CONTAINERPORT"
                           "[/tcp|udp] with ports from 1 to 65535")
    return {"host": int(match[1]), "container": int(match[2]), "protocol": match[3] or "tcp"}


def check(mode: str, publish) -> dict:
    """Return the settings document for `mode` and the parsed `publish` list; raise NetworkError."""
    if mode not in MODES:
        raise NetworkError(f"unknown network mode {mode!r}: use host, none or bridge")
    if publish and mode != "bridge":
        raise NetworkError("published ports (-p) need --network bridge")
    seen = set()
    for port in publish:
        key = (port["host"], port["protocol"])
        if key in seen:
            raise NetworkError(f"host port {port['host']}/{port['protocol']} is published twice")
        seen.add(key)
    return {"mode": mode, "publish": list(publish)}


def save(bundle, settings: dict) -> None:
    """Record `settings` in the bundle (network.json), replaced by rename."""
    etc_files.write_file(store.bundle_file(bundle, store.NETWORK_SETTINGS_NAME), json.dumps(settings) + "\n")


def load(bundle) -> dict:
    """Return the bundle's settings; a bundle without network.json uses the host's network."""
    try:
        settings = fsutil.load_json(store.bundle_file(bundle, store.NETWORK_SETTINGS_NAME))
        return check(settings["mode"], [parse_publish(f"{p['host']}:{p['container']}/"
                                                      f"{p['protocol']}")
                                        for p in settings.get("publish") or []])
    except FileNotFoundError:
        return {"mode": "host", "publish": []}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NetworkError(f"cannot read {bundle}/{store.NETWORK_SETTINGS_NAME}: {err}") from None
