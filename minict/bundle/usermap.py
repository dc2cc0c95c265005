"""Which user namespace config.json asks for (`run --userns`), and how its rootfs is seen.

runtime/userns.py's docstring says what each mode means and reserves the
host ids `auto` needs; this module only writes them into config.json.
"""

from minict.errors import MinictError

MODES = ("identity", "auto", "host")
DEFAULT_MODE = "identity"
ANNOTATION = "org.minict.userns"
IDMAPPED_ROOTFS = "auto"  # the annotation's value: the rootfs is idmapped through the userns


def configure(config: dict, mode: str, id_range: tuple[int, int, int] | None) -> None:
    """Shape the runtime `config` for `mode`; `id_range` is (uid, gid, size) for auto."""
    if mode not in MODES:
        raise MinictError(f"unknown --userns {mode!r}: use {', '.join(MODES)}")
    linux_config = config.setdefault("linux", {})
    if mode == "host":
        linux_config["namespaces"] = [ns for ns in linux_config.get("namespaces", [])
                                      if ns.get("type") != "user"]
    elif mode == "auto":
        uid, gid, size = id_range
        linux_config["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": size}]
        linux_config["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": size}]
        config.setdefault("annotations", {})[ANNOTATION] = IDMAPPED_ROOTFS


def idmapped(config: dict) -> bool:
    """Return whether `config` asks for its rootfs idmapped through the container's userns."""
    return (config.get("annotations") or {}).get(ANNOTATION) == IDMAPPED_ROOTFS
