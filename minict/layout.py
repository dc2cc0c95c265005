"""The OCI image layout: one per repository under images/.

    <layout>/oci-layout        {"imageLayoutVersion": "1.0.0"}
    <layout>/index.json        manifests, each named by the annotation
                               org.opencontainers.image.ref.name (the tag)
    <layout>/blobs/sha256/<hex>

Readers never see a half-written file: blobs get their name only after
their digest and size were checked, and index.json is replaced by rename
under a lock, so concurrent pulls into one repository both land
(image-layout spec; umoci's PutBlob does the same).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from minict import store
from minict.errors import MinictError
from minict.reference import Reference

REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
# Manifests, indexes and configs are small; refusing big ones keeps a hostile
# registry from making us hold gigabytes of JSON (containerd uses 4 MiB too).
JSON_BLOB_MAX = 4 * 1024 * 1024

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def check_digest(digest: str) -> str:
    """Return `digest` if it is sha256:<64 hex>; raise MinictError otherwise."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise MinictError(f"unsupported or malformed digest {digest!r}")
    return digest


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_reference(cls, ref: Reference) -> "Layout":
        return cls(store.image_dir(ref))

    @property
    def blobs_dir(self) -> Path:
        return self.path / "blobs" / "sha256"

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def init(self) -> None:
        """Create the layout's skeleton if it is not there yet."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if not (self.path / "index.json").exists():
            with self.locked():
                if not (self.path / "index.json").exists():
                    _write_atomic(self.path / "index.json", _dump({"schemaVersion": 2, "manifests": []}))
        if not self.exists():
            _write_atomic(self.path / "oci-layout", _dump(LAYOUT_VERSION))

    # -- blobs ------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """Return whether the verified blob is present (with `size`, if given)."""
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def read_blob(self, digest: str, limit: int = JSON_BLOB_MAX) -> bytes:
        """Return a small blob's bytes after checking them against `digest`."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise MinictError(f"blob {digest} is missing from {self.path}") from None
        if len(data) > limit:
            raise MinictError(f"blob {digest} is larger than {limit} bytes")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise MinictError(f"blob {digest} in {self.path} does not match its digest")
        return data

    def read_json_blob(self, digest: str) -> dict:
        try:
            value = json.loads(self.read_blob(digest))
        except ValueError:
            raise MinictError(f"blob {digest} is not valid JSON") from None
        if not isinstance(value, dict):
            raise MinictError(f"blob {digest} is not a JSON object")
        return value

    def put_blob_bytes(self, data: bytes) -> str:
        """Store a small blob (manifest, config) and return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest, len(data)):
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.blob_path(digest), data)
        return digest

    # -- index.json -------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        """Hold the layout's lock (flock on a file beside index.json)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_index(self) -> dict:
        try:
            with open(self.path / "index.json", "rb") as f:
                index = json.loads(f.read(JSON_BLOB_MAX + 1))
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError:
            raise MinictError(f"{self.path / 'index.json'} is not valid JSON") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise MinictError(f"{self.path / 'index.json'} is not an OCI index")
        index.setdefault("manifests", [])
        return index

    def tag(self, descriptor: dict, ref_name: str) -> None:
        """Point `ref_name` at `descriptor`, replacing what it named before."""
        named = dict(descriptor)
        named["annotations"] = {**descriptor.get("annotations", {}), REF_NAME: ref_name}
        with self.locked():
            index = self.read_index()
            index["manifests"] = [
                d for d in index["manifests"]
                if (d.get("annotations") or {}).get(REF_NAME) != ref_name
            ] + [named]
            _write_atomic(self.path / "index.json", _dump(index))

    def refs(self) -> list[tuple[str, dict]]:
        """Return (ref name, descriptor) for every named manifest in index.json."""
        result = []
        for d in self.read_index()["manifests"]:
            name = (d.get("annotations") or {}).get(REF_NAME) if isinstance(d, dict) else None
            if isinstance(name, str):
                result.append((name, d))
        return result

    def resolve(self, ref: Reference) -> dict:
        """Return the index.json descriptor `ref` names; raise MinictError if none."""
        for name, descriptor in self.refs():
            if ref.digest is not None:
                if descriptor.get("digest") == ref.digest:
                    return descriptor
            elif name == ref.tag:
                return descriptor
        raise MinictError(
            f"image {ref.familiar()} not found",
            hint=f"pull it first with 'minict pull --image {ref.familiar()}'",
        )


def list_images() -> list[str]:
    """Return `name:tag` (or `name@digest`) for every stored image, sorted.

    Each string is exactly what `run --image` accepts.
    """
    images = []
    for repository, path in store.list_image_dirs():
        for name, _ in Layout(path).refs():
            images.append(f"{repository}@{name}" if _DIGEST.match(name) else f"{repository}:{name}")
    return images


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
