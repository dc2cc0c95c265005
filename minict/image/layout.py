"""The OCI image layout: one per repository under images/.

    <layout>/oci-layout        {"imageLayoutVersion": "1.0.0"}
    <layout>/index.json        manifests, each named by the annotation
                               org.opencontainers.image.ref.name (the tag)
    <layout>/blobs/sha256/<hex>
    <layout>/.partial/<hex>    downloads in progress (resumable; readers skip it)
    <layout>/.index.lock       flock taken while index.json is rewritten

Readers never see a half-written file: blobs get their name only after
their digest and size were checked, and index.json is replaced by rename
under a lock, so concurrent pulls into one repository both land
(image-layout spec; umoci's PutBlob does the same).
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from minict import boundedjson, fsutil, store
from minict.errors import ImageNotFound, MinictError
from minict.image.mediatypes import DIGEST, JSON_BLOB_MAX, check_digest
from minict.image.reference import Reference

REF_NAME = "org.opencontainers.image.ref.name"
# What the pulled tag or digest named at the registry (an index, or a Docker
# manifest before conversion), and the platform picked from an index: they let
# a re-pull stop after one HEAD when nothing changed.
SOURCE_DIGEST = "dev.minict.source.digest"
SOURCE_PLATFORM = "dev.minict.platform"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}

WRITEBACK_STEP = 8 * 1024 * 1024
# Blobs and index.json are root's alone, like the directories above them
# (store.ensure_dirs), even under a $MINICT_DIR that others can search.
BLOB_MODE = 0o600


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_reference(cls, ref: Reference) -> "Layout":
        return cls(store.image_dir(ref))

    @property
    def blobs_dir(self) -> Path:
        return self.path / store.LAYOUT_BLOBS_NAME / "sha256"

    @property
    def index_path(self) -> Path:
        return self.path / store.LAYOUT_INDEX_NAME

    @property
    def partial_dir(self) -> Path:
        """Return where resumable downloads live: a dot directory, so layout readers skip it."""
        return self.path / store.LAYOUT_PARTIAL_NAME

    def exists(self) -> bool:
        return (self.path / store.LAYOUT_MARKER_NAME).is_file()

    def init(self) -> None:
        """Create the layout's skeleton if it is not there yet."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if not self.index_path.exists():
            with self.locked():
                if not self.index_path.exists():
                    _write_file(self.index_path, _dump({"schemaVersion": 2, "manifests": []}))
        if not self.exists():
            _write_file(self.path / store.LAYOUT_MARKER_NAME, _dump(LAYOUT_VERSION))

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
            value = boundedjson.loads(self.read_blob(digest), JSON_BLOB_MAX)
        except ValueError as err:
            raise MinictError(f"blob {digest} is {boundedjson.explain(err)}") from None
        if not isinstance(value, dict):
            raise MinictError(f"blob {digest} is not a JSON object")
        return value

    def blob_writer(self, digest: str, size: int) -> "BlobWriter":
        """Return a resumable writer for blob `digest` of `size` bytes (a context manager)."""
        return BlobWriter(self, check_digest(digest), size)

    def put_blob_bytes(self, data: bytes) -> str:
        """Store a small blob (manifest, config) and return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest, len(data)):
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            _write_file(self.blob_path(digest), data)
        return digest

    # -- index.json -------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        """Hold the layout's lock (flock on a file beside index.json)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / store.LAYOUT_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_index(self) -> dict:
        try:
            index = fsutil.load_json(self.index_path, JSON_BLOB_MAX)
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError as err:
            raise MinictError(f"{self.index_path} is {boundedjson.explain(err)}") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise MinictError(f"{self.index_path} is not an OCI index")
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
            _write_file(self.index_path, _dump(index))

    def untag(self, ref: Reference) -> list[dict]:
        """Remove what `ref` names from index.json (as resolve finds it); return the removed."""
        with self.locked():
            index = self.read_index()
            keep, removed = [], []
            for d in index["manifests"]:
                name = (d.get("annotations") or {}).get(REF_NAME) if isinstance(d, dict) else None
                (removed if isinstance(name, str) and _names(ref, name, d) else keep).append(d)
            if removed:
                index["manifests"] = keep
                _write_file(self.index_path, _dump(index))
        return removed

    def refs(self) -> list[tuple[str, dict]]:
        """Return (ref name, descriptor) for every named manifest in index.json."""
        result = []
        for d in self.read_index()["manifests"]:
            name = (d.get("annotations") or {}).get(REF_NAME) if isinstance(d, dict) else None
            if isinstance(name, str):
                result.append((name, d))
        return result

    def resolve(self, ref: Reference) -> dict:
        """Return the index.json descriptor `ref` names; raise ImageNotFound if none."""
        for name, descriptor in self.refs():
            if _names(ref, name, descriptor):
                return descriptor
        raise ImageNotFound(f"image {ref.familiar()} not found; "
                            f"pull it first with 'minict pull --image {ref.familiar()}'")


def _names(ref: Reference, name: str, descriptor: dict) -> bool:
    """Return whether index.json's entry `name` -> `descriptor` is what `ref` names."""
    if ref.digest is None:
        return name == ref.tag
    # A pull by digest is named by the digest asked for, which differs
    # from the stored manifest's when it was converted or an index.
    annotations = descriptor.get("annotations") or {}
    return ref.digest in (name, descriptor.get("digest"), annotations.get(SOURCE_DIGEST))


class BlobWriter:
    """Write one blob resumably, so readers only ever see verified blobs.

    Bytes go to `<layout>/.partial/<hex>` (layout readers skip dot
    directories), hashed as they arrive; commit() checks size and digest and
    renames the file into blobs/sha256/.  A partial file left by a killed
    pull is hashed again on open and writing resumes at its end.  An
    exclusive flock on the partial file keeps two pulls from writing one
    blob; the second finds the blob present once the first committed it.

    The partial file is removed, not kept for resuming, when the disk is
    full (it would keep the disk full until a prune) or the body grows past
    the declared size (no registry's bytes go beyond what was declared).
    """

    def __init__(self, layout: Layout, digest: str, size: int):
        self.layout = layout
        self.digest = digest
        self.size = size
        self.path = layout.partial_dir / digest.split(":", 1)[1]
        self.present = False  # the verified blob exists; nothing to write
        self._file = None
        self._hash = hashlib.sha256()
        self.offset = 0
        self._flushed = 0  # bytes whose write-back was started

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layout.blobs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, BLOB_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.layout.has_blob(self.digest, self.size):
                self.present = True
                self._discard_if_ours(fd)
                os.close(fd)
                return self
            # The file we locked may have been renamed into blobs/ (or removed)
            # while we waited; lock the file now at the path instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._rehash()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None

    def _discard_if_ours(self, fd: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)

    def _rehash(self) -> None:
        """Hash what an earlier attempt left, so writing can go on at its end."""
        self._hash = hashlib.sha256()
        self._file.seek(0)
        total = 0
        while chunk := self._file.read(1 << 20):
            if total + len(chunk) > self.size:
                self.restart()
                return
            self._hash.update(chunk)
            total += len(chunk)
        self.offset = self._flushed = total

    def restart(self) -> None:
        """Throw away what was written; the next write starts the blob again."""
        self._file.seek(0)
        self._file.truncate(0)
        self._hash = hashlib.sha256()
        self.offset = self._flushed = 0

    def write(self, data) -> None:
        """Append `data`; raise MinictError if the blob grows past its size or the disk is full."""
        if self.offset + len(data) > self.size:
            self.discard()
            raise MinictError(f"blob {self.digest} is longer than the {self.size} bytes "
                              "its descriptor declares; removed what was written of it")
        view = memoryview(data)
        try:
            while view:
                done = self._file.write(view)
                view = view[done:]
        except OSError as err:
            what = f"cannot write blob {self.digest} under {self.layout.path}: {err.strerror}"
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                written = self.offset + (len(data) - len(view))
                self.discard()
                raise DiskFull(f"{what}; removed the {written} bytes written of it") from None
            # Other failures keep the partial file: a later pull resumes it.
            raise MinictError(what) from None
        self._hash.update(data)
        self.offset += len(data)
        if self.offset - self._flushed >= WRITEBACK_STEP:
            # Start writing the finished range back now (Linux: asynchronously,
            # and dirty pages stay cached), so commit()'s fsync waits only for the tail.
            os.posix_fadvise(self._file.fileno(), self._flushed, self.offset - self._flushed,
                             os.POSIX_FADV_DONTNEED)
            self._flushed = self.offset

    def discard(self) -> None:
        """Remove the partial file and forget it (the lock is kept until exit)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._hash = hashlib.sha256()
        self.offset = self._flushed = 0

    def complete(self) -> bool:
        return self.offset == self.size

    def commit(self) -> None:
        """Check size and digest, then give the blob its name; raise DigestMismatch."""
        got = "sha256:" + self._hash.hexdigest()
        if self.offset != self.size or got != self.digest:
            found = self.offset
            self.restart()
            raise DigestMismatch(
                f"blob {self.digest} does not match its digest: got {got} from {found} "
                f"of {self.size} bytes")
        os.fsync(self._file.fileno())
        os.chmod(self.path, BLOB_MODE)
        os.replace(self.path, self.layout.blob_path(self.digest))
        self.present = True


class DigestMismatch(MinictError):
    """Bytes that do not hash to the digest that named them."""


class DiskFull(MinictError):
    """The store's file system is full (ENOSPC, EDQUOT); the blob's partial file is gone."""


def list_images() -> list[str]:
    """Return `name:tag` (or `name@digest`) for every stored image, sorted.

    Each string is exactly what `run --image` accepts.
    """
    images = []
    for repository, path in store.list_image_dirs():
        # index.json keeps tags in the order they were pulled; list them sorted.
        for name in sorted(name for name, _ in Layout(path).refs()):
            images.append(image_name(repository, name))
    return images


def image_name(repository: str, ref_name: str) -> str:
    """Return `repository:tag` or `repository@digest`, as `run --image` takes it."""
    return f"{repository}@{ref_name}" if DIGEST.match(ref_name) else f"{repository}:{ref_name}"


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_file(path: Path, data: bytes) -> None:
    """Replace `path` (a blob, index.json, oci-layout) by `data`, synced, root's alone."""
    fsutil.write_atomic(path, data, fsync=True, mode=BLOB_MODE)
