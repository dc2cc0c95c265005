"""Turn a stored image into a runtime bundle: containers/<name>/{rootfs/, config.json}.

    containers/<name>/rootfs/             the image's layers, applied in order
    containers/<name>/config.json         the runtime config (spec.generate)
    containers/<name>/.minict-complete    the completion mark, written last

The bundle is built under `containers/.partial-<name>` (a name that
list-containers ignores) and renamed to `containers/<name>` only once
complete, so a container directory always holds a whole bundle.  The mark
(`store.COMPLETE_MARK`, check it with `is_complete`) is written just before that
rename, so a bundle without it was cut short (an error, Ctrl-C, kill -9).
`create` removes its half-made bundle on any error; one left by a killed
process is removed by the next `create` of that name.

`remove_tree` (minict.rmtree's) is the one recursive delete of a bundle: it
stays on one mount, never follows a symlink and works at any depth
(container.remove uses it too).
"""

import errno
import os
import stat
import time
from pathlib import Path

from minict import errors, fsutil, inroot, log, store
from minict.bundle import spec
from minict.bundle.apply import apply_layer
from minict.bundle.layerstream import LayerStream
from minict.errors import MinictError, UnpackError
from minict.image import layout as layouts
from minict.image import mediatypes
from minict.image.reference import Reference
from minict.rmtree import remove_tree  # the bundle's delete; callers use bundle.remove_tree

_USER_DB_MAX = 4 * 1024 * 1024


def is_complete(bundle: Path) -> bool:
    """Return whether `bundle` was fully built (its completion mark exists)."""
    return os.path.isfile(store.bundle_file(bundle, store.COMPLETE_MARK))


def create(ref: Reference, name: str, overrides: spec.Overrides | None = None) -> Path:
    """Build the bundle of container `name` from the stored image `ref`; return its path.

    `overrides` (run's options) change what config.json says.  Does not
    check whether the container exists (container.run does, under its
    lock); a leftover bundle without the completion mark is removed first.
    Raise UnpackError; on any failure nothing of the bundle remains.
    """
    with errors.stage(UnpackError):
        return _create(ref, name, overrides)


def _create(ref: Reference, name: str, overrides: spec.Overrides | None) -> Path:
    bundle = store.container_dir(name)
    image = layouts.Layout.for_reference(ref)
    descriptor = image.resolve(ref)
    try:
        manifest, config = _read_image(image, descriptor)
    except MinictError as err:
        raise UnpackError(f"image {ref.familiar()}: {err.message}") from None  # which image

    store.ensure_dirs()
    partial = store.partial_bundle_dir(name)
    for leftover in (bundle, partial):
        if os.path.lexists(leftover):
            if is_complete(leftover) and leftover == bundle:
                raise UnpackError(f"container directory {bundle} already exists")
            log.info(f"removing the incomplete bundle {leftover} left by an earlier run")
            remove_tree(leftover)
    try:
        os.mkdir(partial, 0o700)
    except OSError as err:
        raise UnpackError(f"cannot create {partial}: {err.strerror}") from None
    try:
        _build(partial, image, manifest, config, name, overrides)
        # No fsync, here or for config.json: on ext4 (data=ordered) it would wait
        # for the whole rootfs just written to reach the disk, and the rootfs is
        # not synced either; the rename is what protects readers.
        mark = {"image": ref.familiar(), "manifest": descriptor["digest"],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fsutil.write_json_atomic(store.bundle_file(partial, store.COMPLETE_MARK), mark, fsync=False)
        os.rename(partial, bundle)  # fails rather than replace a bundle made meanwhile
    except BaseException:
        try:
            remove_tree(partial)
        except (OSError, MinictError) as cleanup:
            log.error(f"cannot remove the half-made bundle {partial}: {cleanup}")
        raise  # an OSError becomes the unpack stage's error (errors.stage)
    log.info(f"unpacked image bundle: {bundle}")
    return bundle


def _read_image(image: layouts.Layout, descriptor: dict) -> tuple[dict, dict]:
    """Return (manifest, config) of the image `descriptor` names, checked."""
    if descriptor.get("mediaType") in mediatypes.INDEX_TYPES:
        descriptor = pick_platform(image.read_json_blob(descriptor.get("digest")))
    manifest = image.read_json_blob(descriptor.get("digest"))
    # umoci writes manifests without mediaType: absent is fine, a wrong one is not.
    kind = manifest.get("mediaType", descriptor.get("mediaType"))
    if kind is not None and kind not in mediatypes.MANIFEST_TYPES:
        raise MinictError(f"unsupported manifest media type {kind!r}")
    config_desc, layers = mediatypes.check_manifest(manifest, "stored manifest")
    if config_desc.get("mediaType") not in mediatypes.CONFIG_TYPES:
        raise MinictError(f"unsupported config media type {config_desc.get('mediaType')!r}")
    config = image.read_json_blob(config_desc.get("digest"))
    if config.get("os", "linux") != "linux":
        raise MinictError(f"image is for {config.get('os')!r}; minict runs linux images only")
    arch = mediatypes.host_platform().split("/")[1]
    if config.get("architecture") not in (None, arch):
        log.warn(f"image is for architecture {config.get('architecture')}, this host is {arch}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise MinictError(f"config lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
                          f"diff_ids for {len(layers)} layers")
    for layer, diff_id in zip(layers, diff_ids):
        if not isinstance(layer, dict) or layer.get("mediaType") not in mediatypes.LAYER_MEDIA_TYPES:
            kind = layer.get("mediaType") if isinstance(layer, dict) else layer
            raise MinictError(f"unsupported layer media type {kind!r}")
        mediatypes.check_digest(layer.get("digest"))
        mediatypes.check_digest(diff_id)
    return manifest, config


def pick_platform(index: dict) -> dict:
    """Return the entry of a stored `index` this host runs, as pull picks it; raise MinictError."""
    want = mediatypes.host_platform()
    entry = mediatypes.select_platform(index, want)
    if entry is None:
        raise MinictError(f"the image index has no {want} image")
    return entry


def _build(bundle: Path, image: layouts.Layout, manifest: dict, config: dict, name: str,
           overrides: spec.Overrides | None = None) -> None:
    """Apply every layer into bundle/rootfs, then write bundle/config.json."""
    rootfs = store.bundle_file(bundle, store.ROOTFS_NAME)
    os.mkdir(rootfs, 0o755)
    os.chmod(rootfs, 0o755)  # the umask's choice is not the image's; "." entries may change it
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        diff_ids = config["rootfs"]["diff_ids"]
        for layer, diff_id in zip(manifest["layers"], diff_ids):
            digest = layer["digest"]
            log.info(f"unpack layer: {digest}")
            compression = mediatypes.LAYER_MEDIA_TYPES[layer["mediaType"]]
            blob = image.blob_path(digest)
            if not blob.is_file():
                raise UnpackError(f"layer {digest} is missing from {image.path}")
            started = time.monotonic()
            with LayerStream(blob, compression) as stream:
                apply_layer(root_fd, stream, digest)
            if stream.diff_id != diff_id:
                raise UnpackError(f"layer {digest}: its content is {stream.diff_id}, "
                                  f"the image config says {diff_id}")
            log.debug(f"layer {digest} applied in {time.monotonic() - started:.2f}s")
        passwd = _read_user_db(root_fd, "passwd")
        group = _read_user_db(root_fd, "group")
    finally:
        os.close(root_fd)
    try:
        document = spec.generate(config, name, passwd, group, overrides,
                                 host_masked=thermal_throttle_paths())
    except spec.SpecError as err:
        raise UnpackError(f"cannot write {store.CONFIG_NAME}: {err}") from None
    fsutil.write_json_atomic(store.bundle_file(bundle, store.CONFIG_NAME), document, fsync=False,
                             indent="\t")


def thermal_throttle_paths() -> tuple[str, ...]:
    """Return the host's per-CPU thermal_throttle directories, which moby masks too.

    Their counters move with what other containers run (GHSA-6fw5-f8r9-fgfm).
    """
    base = "/sys/devices/system/cpu"
    try:
        names = os.listdir(base)
    except OSError:
        return ()
    cpus = sorted(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())
    return tuple(f"{base}/cpu{n}/thermal_throttle" for n in cpus
                 if os.path.isdir(f"{base}/cpu{n}/thermal_throttle"))


def read_user_databases(rootfs) -> tuple[str | None, str | None]:
    """Return the rootfs's /etc/passwd and /etc/group (None when absent), resolved in the rootfs."""
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _read_user_db(root_fd, "passwd"), _read_user_db(root_fd, "group")
    finally:
        os.close(root_fd)


def _read_user_db(root_fd: int, name: str) -> str | None:
    """Return the rootfs's /etc/<name>, or None if absent or not a file.

    Symlinks are followed inside the rootfs (`/etc/passwd ->
    /usr/share/baselayout/passwd`), never out of it.
    """
    path = f"etc/{name}"
    try:
        # Looked at before it is opened: opening a device node can do things.
        found = inroot.open_in_root(root_fd, path)
        try:
            looked = os.fstat(found)
        finally:
            os.close(found)
        if not stat.S_ISREG(looked.st_mode):
            return None
        fd = inroot.open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        log.warn(f"/etc/{name} in the rootfs is a symlink loop; not reading it")
        return None
    with os.fdopen(fd, "rb") as f:
        opened = os.fstat(f.fileno())
        if (opened.st_dev, opened.st_ino) != (looked.st_dev, looked.st_ino):
            return None  # changed in between
        return f.read(_USER_DB_MAX).decode("utf-8", "replace")
