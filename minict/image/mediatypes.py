"""Media types, manifest and index checks, and the platform choice: one rule for every reader.

Pull (what a registry sent), run (bundle/create.py: what the layout holds), the
listings and the garbage collector all ask the same questions of the same
documents: is this an index, which entry is this host's, is this manifest
well formed, which layer types can be applied.  They are answered here, so
an i386 or armv6l host resolves an index to the same image whether it pulls
or runs.  Light on purpose (no registry, no layout): `run` imports it.
"""

import json
import os
import re

from minict import boundedjson
from minict.errors import InvalidImage, MinictError, shorten

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
# Docker layer types and their OCI names (containers/image manifest/oci.go).
DOCKER_LAYERS = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar":
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
# Layer media types and their compression (image-spec media-types.md, and
# Docker's, which skopeo keeps when it copies schema 2 images).
LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": None,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": None,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar": None,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
# Manifests, indexes and configs are small; refusing big ones keeps a hostile
# registry from making us hold gigabytes of JSON (containerd uses 4 MiB too).
JSON_BLOB_MAX = 4 * 1024 * 1024
# No registry serves layers this big (the big public ones stop far below), and
# a descriptor claiming more would only fill the disk: refused before downloading.
BLOB_SIZE_MAX = 256 * 1024 ** 3

DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def check_digest(digest: str) -> str:
    """Return `digest` if it is sha256:<64 hex>; raise MinictError otherwise."""
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise MinictError(f"unsupported or malformed digest {shorten(digest, 80)!r}")
    return digest


def is_index(media_type, doc: dict) -> bool:
    """Return whether the document `doc`, served or described as `media_type`, is an index."""
    return media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in doc)


# -- platforms -------------------------------------------------------------

# `uname -m` to Go's GOARCH and variant (containerd's platforms package).
_MACHINES = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "i386": ("386", ""), "i686": ("386", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""), "loongarch64": ("loong64", ""),
}
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}


def normalize_platform(os_name: str, arch: str, variant: str = "") -> str:
    """Return `os/arch[/variant]` normalised: arm64 ≡ arm64/v8, arm ≡ arm/v7, amd64/v1 ≡ amd64."""
    os_name, arch, variant = os_name.lower(), arch.lower(), (variant or "").lower()
    arch = _ARCH_ALIASES.get(arch, arch)
    if variant.isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant in ("", "v8"):
        variant = "v8"
    elif arch == "arm" and not variant:
        variant = "v7"
    elif arch == "amd64" and variant == "v1":
        variant = ""
    return "/".join(p for p in (os_name, arch, variant) if p)


def host_platform() -> str:
    """Return this host's platform: linux and `uname -m` in Go's names."""
    machine = os.uname().machine  # not platform.machine(): `platform` costs ~15 ms to import
    arch, variant = _MACHINES.get(machine, (machine, ""))
    return normalize_platform("linux", arch, variant)


def parse_platform(text: str) -> str:
    """Return the normalised platform `os/arch[/variant]`; raise InvalidImage."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InvalidImage(f"invalid platform {text!r}: use os/arch[/variant], e.g. linux/arm64")
    return normalize_platform(*parts)


def _acceptable(want: str) -> list[str]:
    """Return the platforms that can run on `want`, best first (arm/v7 runs v6 and v5)."""
    parts = want.split("/")
    if len(parts) == 3 and parts[1] == "arm" and parts[2] in ("v8", "v7", "v6", "v5"):
        newest = int(parts[2][1:])
        return [f"{parts[0]}/arm/v{n}" for n in range(newest, 4, -1)]
    return [want]


def _entry_platform(entry: dict) -> str | None:
    """Return an index entry's normalised platform, or None for attestations and the like."""
    spec = entry.get("platform")
    if not isinstance(spec, dict):
        return None
    os_name, arch = str(spec.get("os") or ""), str(spec.get("architecture") or "")
    annotations = entry.get("annotations") or {}
    if not os_name or not arch or "unknown" in (os_name, arch) or \
            annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return None
    return normalize_platform(os_name, arch, str(spec.get("variant") or ""))


def select_platform(index: dict, want: str) -> dict | None:
    """Return the entry of `index` that runs on platform `want` (best first), or None."""
    offered = _offers(index)
    for candidate in _acceptable(want):
        for entry, found in offered:
            if found == candidate:
                return entry
    return None


def choose_platform(index: dict, want: str, what: str) -> dict:
    """Return the entry of `index` for platform `want`; raise InvalidImage listing the offers."""
    entry = select_platform(index, want)
    if entry is not None:
        return entry
    offers = sorted({p for _, p in _offers(index) if p})
    raise InvalidImage(f"{what} has no image for platform {want}; it offers "
                    + (", ".join(offers) if offers else "no platforms"),
                    hint="choose one with --platform")


def _offers(index: dict) -> list[tuple[dict, str | None]]:
    """Return (entry, its normalised platform or None) for every entry of `index`."""
    return [(e, _entry_platform(e)) for e in index.get("manifests") or [] if isinstance(e, dict)]


# -- manifests -------------------------------------------------------------

def go_json(value) -> bytes:
    """Encode `value` as Go's encoding/json does, so converted manifests match skopeo's bytes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def classify(data: bytes, media: str, what: str) -> tuple[str, dict]:
    """Return ("index" | "oci" | "docker", document) of a manifest; raise InvalidImage.

    The body's mediaType wins over Content-Type; umoci writes manifests
    without one, so then the header, then the shape decides.
    """
    try:
        doc = boundedjson.loads(data, JSON_BLOB_MAX)
    except ValueError as err:
        if media in SCHEMA1 and not isinstance(err, boundedjson.UnsafeJSON):
            doc = {}
        else:
            raise InvalidImage(f"{what}: the manifest is {boundedjson.explain(err)}") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"{what}: the manifest is not a JSON object")
    kind = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else media
    if kind in SCHEMA1 or doc.get("schemaVersion") == 1:
        raise InvalidImage(f"{what}: the image has a Docker schema 1 manifest, which minict does not "
                        "support", hint="push it again with a current Docker or skopeo (schema 2)")
    if is_index(kind, doc):
        return "index", doc
    if kind == DOCKER_MANIFEST:
        return "docker", doc
    if kind == OCI_MANIFEST or "config" in doc:
        return "oci", doc
    raise InvalidImage(f"{what}: unsupported manifest media type {shorten(kind or 'unknown')!r}")


def check_descriptor(value, what: str) -> dict:
    """Return `value` if it is a descriptor with a sha256 digest and a sane size; raise InvalidImage."""
    if not isinstance(value, dict):
        raise InvalidImage(f"{what}: a descriptor is not a JSON object")
    check_digest(value.get("digest"))
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidImage(f"{what}: descriptor {value.get('digest')} has no valid size")
    if size > BLOB_SIZE_MAX:
        raise InvalidImage(f"{what}: descriptor {value['digest']} declares {size} bytes, over the "
                        f"{BLOB_SIZE_MAX}-byte limit")
    return value


def check_manifest(doc: dict, what: str) -> tuple[dict, list[dict]]:
    """Return (config, layers) descriptors of an image manifest; raise InvalidImage."""
    if doc.get("schemaVersion") != 2:
        raise InvalidImage(f"{what}: schemaVersion is {doc.get('schemaVersion')!r}, not 2")
    config = check_descriptor(doc.get("config"), what)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidImage(f"{what}: the manifest has no layers list")
    if config["size"] > JSON_BLOB_MAX:
        raise InvalidImage(f"{what}: the config is {config['size']} bytes, over the "
                        f"{JSON_BLOB_MAX}-byte limit")
    return config, [check_descriptor(layer, what) for layer in layers]


def _oci_descriptor(d: dict, media_type: str) -> dict:
    """Return an OCI descriptor in Go's field order (mediaType, digest, size, urls, annotations)."""
    out = {"mediaType": media_type, "digest": d["digest"], "size": d["size"]}
    if d.get("urls"):
        out["urls"] = d["urls"]
    if d.get("annotations"):
        out["annotations"] = dict(sorted(d["annotations"].items()))
    return out


def docker_to_oci(doc: dict) -> bytes:
    """Return the OCI manifest for a Docker schema 2 one, byte for byte as skopeo writes it.

    The config blob is kept as it is (a Docker config is a valid OCI
    config); only media types change, so the manifest digest changes.
    """
    config = doc["config"]
    out = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _oci_descriptor(config, OCI_CONFIG),
        "layers": [_oci_descriptor(layer, DOCKER_LAYERS.get(layer.get("mediaType"),
                                                          layer.get("mediaType")))
                   for layer in doc["layers"]],
    }
    if doc.get("annotations"):
        out["annotations"] = dict(sorted(doc["annotations"].items()))
    return go_json(out)

