"""Build OCI and Docker images byte by byte, push them, or write them as a layout.

    layer = tar_layer([Dir("etc"), File("etc/hostname", b"box\\n"), Symlink("bin/sh", "busybox")])
    image = Image([layer], config={"Cmd": ["sh"]})           # OCI, gzip layers
    index = Index([(image, {"os": "linux", "architecture": "amd64"})])
    push(registry.url, "test/app", "latest", index)
    write_layout(tmp_path / "layout", "latest", image)

Entries are written exactly as given (names are not normalised), so a test
can build hostile layers (`../x`, `/abs`, whiteouts of parents) as easily as
good ones.  Nothing here imports pytest: bench/ uses it too.
"""

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = {
    None: "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_MTIME = 1_700_000_000  # fixed, so the same entries give the same digests
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform() -> dict:
    """Return this machine's platform as OCI names it ({"os": "linux", "architecture": ...})."""
    machine = platform.machine()
    return {"os": "linux", "architecture": GO_ARCH.get(machine, machine)}


# -- tar entries ----------------------------------------------------------


@dataclass
class Entry:
    """One tar member; build it with File, Dir, Symlink, Hardlink, ... below."""

    name: str
    type: bytes
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict = field(default_factory=dict)
    pax: dict = field(default_factory=dict)
    uname: str = ""
    gname: str = ""

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.type
        info.mode = self.mode if self.mode is not None else _DEFAULT_MODE[self.type]
        info.uid, info.gid = self.uid, self.gid
        info.uname, info.gname = self.uname, self.gname
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.data) if self.type == tarfile.REGTYPE else 0
        headers = dict(self.pax)
        for key, value in self.xattrs.items():
            # PAX records are bytes on the wire; tarfile takes str and, for
            # values that are not UTF-8, writes hdrcharset=BINARY and the raw
            # bytes back out of the surrogate escapes.
            if isinstance(value, bytes):
                value = value.decode("utf-8", "surrogateescape")
            headers[f"SCHILY.xattr.{key}"] = value
        info.pax_headers = headers
        return info


_DEFAULT_MODE = {
    tarfile.REGTYPE: 0o644, tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777,
    tarfile.LNKTYPE: 0o644, tarfile.CHRTYPE: 0o666, tarfile.BLKTYPE: 0o660,
    tarfile.FIFOTYPE: 0o644,
}


def File(name, data=b"", mode=0o644, **kw) -> Entry:
    """A regular file; mode may carry setuid/setgid/sticky (0o4755)."""
    return Entry(name, tarfile.REGTYPE, data=bytes(data), mode=mode, **kw)


def Dir(name, mode=0o755, **kw) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def Symlink(name, target, **kw) -> Entry:
    return Entry(name, tarfile.SYMTYPE, linkname=target, **kw)


def Hardlink(name, target, **kw) -> Entry:
    """A hard link to `target`, an earlier member's name (tar names, not paths)."""
    return Entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def CharDevice(name, major, minor, mode=0o666, **kw) -> Entry:
    return Entry(name, tarfile.CHRTYPE, devmajor=major, devminor=minor, mode=mode, **kw)


def BlockDevice(name, major, minor, mode=0o660, **kw) -> Entry:
    return Entry(name, tarfile.BLKTYPE, devmajor=major, devminor=minor, mode=mode, **kw)


def Fifo(name, mode=0o644, **kw) -> Entry:
    return Entry(name, tarfile.FIFOTYPE, mode=mode, **kw)


def Whiteout(path, **kw) -> Entry:
    """The OCI whiteout deleting `path` from lower layers: `<dir>/.wh.<base>`."""
    head, _, base = path.rstrip("/").rpartition("/")
    return File(f"{head}/.wh.{base}" if head else f".wh.{base}", **kw)


def Opaque(directory, **kw) -> Entry:
    """The opaque whiteout hiding everything lower layers put in `directory`."""
    directory = directory.rstrip("/")
    return File(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq", **kw)


def tar_layer(entries, compression=None) -> bytes:
    """Return a PAX tar of `entries` (Entry objects, in order), compressed if asked."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = entry.tarinfo()
            tar.addfile(info, io.BytesIO(entry.data) if info.isreg() else None)
    return compress(buf.getvalue(), compression)


def compress(data: bytes, compression: str | None) -> bytes:
    """Return `data` compressed with None, "gzip" or "zstd"."""
    if compression is None:
        return data
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            if shutil.which("zstd") is None:
                raise RuntimeError("zstd compression needs the zstandard module or zstd") from None
            return subprocess.run(["zstd", "-q", "-c", "-"], input=data, stdout=subprocess.PIPE,
                                  check=True).stdout
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def rootfs_entries(root) -> list[Entry]:
    """Return Entries for a directory tree on disk (regular files, dirs, symlinks)."""
    root = Path(root)
    entries = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = Path(current, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            common = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                entries.append(Symlink(rel, os.readlink(path), uid=st.st_uid, gid=st.st_gid))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Dir(rel, **common))
            elif stat.S_ISREG(st.st_mode):
                entries.append(File(rel, path.read_bytes(), **common))
    return entries


# -- images ---------------------------------------------------------------


class Layer:
    """A layer blob: its uncompressed tar (for the diff_id) and what is stored."""

    def __init__(self, tar: bytes, compression: str | None = "gzip", *, media="oci",
                 blob: bytes | None = None, media_type: str | None = None):
        self.tar = tar
        self.compression = compression
        self.blob = blob if blob is not None else compress(tar, compression)
        table = OCI_LAYER if media == "oci" else DOCKER_LAYER
        if media_type is None and compression not in table:
            raise ValueError(f"{media} images have no {compression} layer media type")
        self.media_type = media_type or table[compression]
        self.diff_id = sha256(tar)
        self.digest = sha256(self.blob)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


class Image:
    """An image: layers, a config and the manifest that names them.

    `layers` items are lists of Entry, uncompressed tar bytes, or Layer.
    `config` is the config's "config" object (Cmd, Env, User, WorkingDir, ...);
    `extra` is merged into the top level of the config document last, so a
    test can also break it (wrong diff_ids, missing rootfs).
    """

    def __init__(self, layers=(), config=None, *, media="oci", compression="gzip",
                 architecture=None, os_name=None, variant=None, extra=None,
                 annotations=None, manifest_extra=None):
        if media not in ("oci", "docker"):
            raise ValueError("media is 'oci' or 'docker'")
        self.media = media
        self.layers = [self._layer(item, compression) for item in layers]
        host = host_platform()
        doc = {
            "created": "2023-11-14T22:13:20Z",
            "architecture": architecture or host["architecture"],
            "os": os_name or host["os"],
            "config": dict(config or {}),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "tests.support.images"}
                        for _ in self.layers],
        }
        if variant:
            doc["variant"] = variant
        doc.update(extra or {})
        self.config_doc = doc
        self.config_bytes = json.dumps(doc, separators=(",", ":")).encode()
        self.config_digest = sha256(self.config_bytes)
        self.media_type = OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": {"mediaType": OCI_CONFIG if media == "oci" else DOCKER_CONFIG,
                       "digest": self.config_digest, "size": len(self.config_bytes)},
            "layers": [layer.descriptor() for layer in self.layers],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest.update(manifest_extra or {})
        self.manifest = manifest
        self.manifest_bytes = json.dumps(manifest, indent=3).encode()
        self.digest = sha256(self.manifest_bytes)

    def _layer(self, item, compression) -> Layer:
        if isinstance(item, Layer):
            return item
        if isinstance(item, (bytes, bytearray)):
            return Layer(bytes(item), compression, media=self.media)
        return Layer(tar_layer(item), compression, media=self.media)

    @property
    def blobs(self) -> dict[str, bytes]:
        """Return {digest: bytes} for the config and every layer."""
        blobs = {self.config_digest: self.config_bytes}
        blobs.update((layer.digest, layer.blob) for layer in self.layers)
        return blobs

    def descriptor(self, platform=None) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest_bytes)}
        if platform:
            d["platform"] = dict(platform)
        return d


class Index:
    """An OCI image index or a Docker manifest list of (image, platform) pairs."""

    def __init__(self, entries, *, media="oci", annotations=None):
        self.entries = [(image, dict(platform or {})) for image, platform in entries]
        self.media_type = OCI_INDEX if media == "oci" else DOCKER_LIST
        doc = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [image.descriptor(platform) for image, platform in self.entries],
        }
        if annotations:
            doc["annotations"] = dict(annotations)
        self.manifest = doc
        self.manifest_bytes = json.dumps(doc, indent=3).encode()
        self.digest = sha256(self.manifest_bytes)

    @property
    def images(self) -> list:
        return [image for image, _ in self.entries]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Return {digest: bytes} of every child image's manifest, config and layers."""
        blobs = {}
        for image in self.images:
            blobs[image.digest] = image.manifest_bytes
            blobs.update(image.blobs)
        return blobs

    def descriptor(self, platform=None) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest,
                "size": len(self.manifest_bytes)}


# -- the registry API -----------------------------------------------------


def _session(auth) -> requests.Session:
    session = requests.Session()
    session.auth = auth  # (user, password) for basic auth, or a requests AuthBase
    return session


def push_blob(registry_url, repo, data: bytes, auth=None, session=None) -> str:
    """Upload one blob (monolithic POST + PUT) unless the registry has it; return its digest."""
    session = session or _session(auth)
    digest = sha256(data)
    base = f"{registry_url}/v2/{repo}/blobs"
    head = session.head(f"{base}/{digest}", timeout=30)
    if head.status_code == 200:
        return digest
    started = session.post(f"{base}/uploads/", timeout=30)
    _expect(started, {202}, f"start upload to {repo}")
    location = requests.compat.urljoin(registry_url + "/", started.headers["Location"])
    done = session.put(location, params={"digest": digest}, data=data, timeout=120,
                       headers={"Content-Type": "application/octet-stream"})
    _expect(done, {201}, f"upload {digest} to {repo}")
    return digest


def push_manifest(registry_url, repo, ref, data: bytes, media_type, auth=None,
                  session=None) -> str:
    """PUT manifest bytes under `ref` (a tag or digest); return the registry's digest."""
    session = session or _session(auth)
    response = session.put(f"{registry_url}/v2/{repo}/manifests/{ref}", data=data,
                           headers={"Content-Type": media_type}, timeout=30)
    _expect(response, {201}, f"put manifest {repo}:{ref}")
    return response.headers.get("Docker-Content-Digest", sha256(data))


def push(registry_url, repo, ref, obj, auth=None) -> str:
    """Push an Image or Index (with everything it names) as `repo:ref`; return its digest."""
    session = _session(auth)
    if isinstance(obj, Index):
        for image in obj.images:
            push(registry_url, repo, image.digest, image, auth)
    else:
        for data in obj.blobs.values():
            push_blob(registry_url, repo, data, session=session)
    return push_manifest(registry_url, repo, ref, obj.manifest_bytes, obj.media_type,
                         session=session)


def _expect(response, statuses, what) -> None:
    if response.status_code not in statuses:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")


# -- OCI image layout -----------------------------------------------------


def write_layout(path, tag, obj) -> Path:
    """Write `obj` (Image or Index) into the OCI layout at `path`, named `tag`.

    Other names already in the layout's index.json stay.
    """
    path = Path(path)
    blobs_dir = path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    blobs = dict(obj.blobs)
    blobs[obj.digest] = obj.manifest_bytes
    for digest, data in blobs.items():
        (blobs_dir / digest.split(":", 1)[1]).write_bytes(data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = path / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "manifests": []})
    index["manifests"] = [d for d in index["manifests"]
                          if (d.get("annotations") or {}).get(REF_NAME) != tag]
    descriptor = obj.descriptor()
    descriptor["annotations"] = {REF_NAME: tag}
    index["manifests"].append(descriptor)
    index_path.write_text(json.dumps(index))
    return path
