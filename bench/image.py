"""Build, cache and push the benchmark image.

The image is a Debian bookworm `debootstrap --variant=minbase` rootfs in
three layers, so pulling and unpacking meet what real images carry:

    1. the whole rootfs: ~6,700 entries with 8 device nodes, 2 hard links and
       ~650 symlinks; ~120 MB of tar, ~51 MB gzip (apt's .debs and lists dropped)
    2. deletions: /usr/share/doc/* and /usr/share/man removed -> 90 whiteouts
    3. /etc/apt/apt.conf.d replaced whole (an opaque whiteout) and a few new files

Its Cmd is ["/bin/true"], so running it measures the runtime, not the payload.

Both slow steps are cached under bench/.cache/ (gitignored): the debootstrap
rootfs as a tarball, and the OCI layout umoci builds from it.  Each benchmark
run only pushes the cached layout to its own registry with skopeo.  Delete
bench/.cache/ after changing how the image is built.
"""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SUITE = "bookworm"
TAG = "minbase"
REPOSITORY = "bench/debian"
ROOTFS_TARBALL = CACHE / f"debian-{SUITE}-minbase.tar"
# skopeo's oci:PATH:TAG cannot take a PATH with a colon; this one has none.
LAYOUT = CACHE / "oci"
CMD = "/bin/true"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_SOURCES = [Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")]


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def sh(*argv, **kwargs) -> subprocess.CompletedProcess:
    """Run argv (checked), echoing it on stderr; raise BenchError with its stderr."""
    print("+", " ".join(str(a) for a in argv), file=sys.stderr, flush=True)
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          **kwargs)
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def debian_mirror() -> str:
    """Return the Debian mirror URL apt on this machine uses for `SUITE`.

    Reads one-line `deb URI SUITE ...` entries and deb822 `.sources` stanzas;
    raise BenchError when neither names the suite.
    """
    for path in _apt_source_files():
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                if ("deb" in fields.get("types", "").split()
                        and SUITE in fields.get("suites", "").split() and fields.get("uris")
                        and fields.get("enabled", "yes").lower() != "no"):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise BenchError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list*")


def _apt_source_files() -> list[Path]:
    files = []
    for path in APT_SOURCES:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources"))
        elif path.is_file():
            files.append(path)
    return files


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def rootfs_tarball() -> Path:
    """Return the cached minbase rootfs tarball, running debootstrap first if absent."""
    if ROOTFS_TARBALL.exists():
        return ROOTFS_TARBALL
    CACHE.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="debootstrap.") as work:
        rootfs = Path(work) / "rootfs"
        sh("debootstrap", "--variant=minbase", SUITE, rootfs, mirror)
        _clean_apt(rootfs)
        partial = Path(work) / "rootfs.tar"
        sh("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", rootfs,
           "-cf", partial, ".")
        partial.rename(ROOTFS_TARBALL)
    return ROOTFS_TARBALL


def _clean_apt(rootfs: Path) -> None:
    """Drop the downloaded .debs and package lists, as Debian's own images do.

    debootstrap leaves ~100 MB of them behind; real images never ship them.
    """
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in rootfs.glob(pattern):
            path.unlink()


def layout() -> Path:
    """Return the cached OCI layout (tag `TAG`) of the bench image, building it if absent."""
    if (LAYOUT / "index.json").exists():
        return LAYOUT
    tarball = rootfs_tarball()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="oci.") as work:
        work = Path(work)
        built = work / "oci"
        image = f"{built}:{TAG}"
        bundle = work / "bundle"
        sh("umoci", "init", "--layout", built)
        sh("umoci", "new", "--image", image)
        sh("umoci", "config", "--image", image, "--config.cmd", CMD, "--config.env", PATH_ENV)
        sh("umoci", "unpack", "--image", image, bundle)
        rootfs = bundle / "rootfs"

        sh("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", rootfs,
           "-xf", tarball)
        _repack(image, bundle, "debootstrap --variant=minbase " + SUITE)

        for doc in (rootfs / "usr/share/doc").iterdir():
            _remove(doc)
        _remove(rootfs / "usr/share/man")
        _repack(image, bundle, "rm -rf /usr/share/doc/* /usr/share/man")

        opaque_layer = work / "layer3.tar"
        write_opaque_layer(opaque_layer)
        sh("umoci", "raw", "add-layer", "--image", image, opaque_layer)

        sh("umoci", "gc", "--layout", built)
        built.rename(LAYOUT)
    return LAYOUT


def write_opaque_layer(path: Path) -> None:
    """Write layer 3: /etc/apt/apt.conf.d replaced whole, and a few new files.

    Written with tarfile, not `umoci insert`: umoci 0.4.7's insert leaves out
    the tar end-of-archive blocks (umoci issue #436), which GNU tar and
    Python's tarfile reject.  The opaque marker comes first, as umoci writes it.
    """
    def add(tar, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, target=""):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.size = kind, mode, 1_700_000_000, len(data)
        info.linkname = target
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "etc/apt/apt.conf.d/.wh..wh..opq", mode=0o600)
        add(tar, "etc/apt/apt.conf.d", tarfile.DIRTYPE, mode=0o755)
        add(tar, "etc/apt/apt.conf.d/01bench-no-recommends",
            data=b'APT::Install-Recommends "false";\n')
        add(tar, "etc/apt/apt.conf.d/02bench-no-cache", data=b'Dir::Cache::pkgcache "";\n')
        add(tar, "etc/apt/apt.conf.d/99bench-link", tarfile.SYMTYPE,
            target="01bench-no-recommends")
        add(tar, "usr/local/bin/bench-hello", data=b"#!/bin/sh\necho hello\n", mode=0o755)
        add(tar, "etc/minict-bench", data=b"The minict benchmark image.\n")


def _repack(image: str, bundle: Path, created_by: str) -> None:
    sh("umoci", "repack", "--refresh-bundle", "--history.created_by", created_by,
       "--image", image, bundle)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def push(registry_host: str) -> str:
    """Push the cached bench image to the plain-HTTP registry at `registry_host`.

    Return the pushed reference, `HOST/bench/debian:minbase`.
    """
    reference = f"{registry_host}/{REPOSITORY}:{TAG}"
    sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false",
       f"oci:{layout()}:{TAG}", f"docker://{reference}")
    return reference


def layer_blobs(layout_dir: Path) -> list[Path]:
    """Return the layer blob files of the bench image in OCI layout `layout_dir`, base first."""
    def blob(digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return layout_dir / "blobs" / algorithm / encoded

    index = json.loads((layout_dir / "index.json").read_text())
    [descriptor] = [m for m in index["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == TAG]
    manifest = json.loads(blob(descriptor["digest"]).read_bytes())
    return [blob(layer["digest"]) for layer in manifest["layers"]]


if __name__ == "__main__":
    try:
        print(layout())
        for path in layer_blobs(layout()):
            print(f"{path.stat().st_size:>12,}  {path.name}")
    except BenchError as err:
        sys.exit(f"bench: {err}")
