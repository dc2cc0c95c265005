"""Removing images: untag (rmi), and delete the blobs no manifest references any more.

    images/              the directory itself is the lock (flock): shared by
                         every pull and every bundle being unpacked,
                         exclusive while blobs are deleted

Why one lock over all of images/: a pull decides early that a blob is
present and skips it, and names it in index.json only at its very end; an
unpack reads layers a manifest named when it started.  A sweep in between
would delete what they count on.  With the lock, a sweep runs only when no
pull or unpack is under way, so every blob it sees either is referenced by
index.json or belongs to nobody; `.partial/` downloads are kept (a later pull
resumes them) unless their repository goes as a whole, or `prune` finds them
an hour old (or is forced: prune_partial_downloads).
"""

import contextlib
import fcntl
import os
import re
import stat
from pathlib import Path

from minict import log, store
from minict.errors import ImageNotFound, MinictError
from minict.image import layout as layouts
from minict.image import mediatypes
from minict.image.reference import Reference

# What an image layout holds besides blobs/: removed when its last tag goes.
_LAYOUT_FILES = (store.LAYOUT_INDEX_NAME, store.LAYOUT_MARKER_NAME, store.LAYOUT_LOCK_NAME)
_HEX = re.compile(r"[0-9a-f]{64}")


@contextlib.contextmanager
def using():
    """Hold the blobs in place while a pull or an unpack works with them (shared lock)."""
    with _lock(fcntl.LOCK_SH, "a sweep of unreferenced blobs"):
        yield


@contextlib.contextmanager
def sweeping():
    """Keep every pull and unpack away while blobs are deleted (exclusive lock)."""
    with _lock(fcntl.LOCK_EX, "pulls and unpacks"):
        yield


@contextlib.contextmanager
def _lock(kind: int, others: str):
    store.ensure_dirs()
    # A directory that always exists: locking it writes nothing to disk.
    fd = os.open(store.images_dir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for {others} to finish")
            fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


def remove(ref: Reference) -> tuple[list[str], list[str]]:
    """Untag `ref` and delete the blobs of its layout nothing references any more.

    Return (the untagged images as list-images names them, the deleted
    digests).  The repository's directory goes when its last tag does.
    Raise MinictError if `ref` is not stored.
    """
    layout = layouts.Layout.for_reference(ref)
    with sweeping():
        if not layout.exists():
            raise ImageNotFound(f"image {ref.familiar()} not found")
        removed = layout.untag(ref)
        if not removed:
            raise ImageNotFound(f"image {ref.familiar()} not found")
        names = [layouts.image_name(ref.familiar_name, d["annotations"][layouts.REF_NAME])
                 for d in removed]
        deleted = _sweep(layout)
    return names, deleted


def prune() -> list[str]:
    """Delete every unreferenced blob of every image layout; return their digests."""
    deleted = []
    with sweeping():
        for _, path in store.list_image_dirs():
            deleted += _sweep(layouts.Layout(path))
    return deleted


def prune_partial_downloads(force: bool) -> list[str]:
    """Delete what killed pulls left in the layouts' .partial/; return the blobs' digests.

    A partial download is taken only when no pull writes it (the sweep lock
    keeps pulls out, and a writer's flock on the file is checked too) and,
    unless `force`, when it is an hour old: a pull tried again soon resumes it.
    """
    deleted = []
    with sweeping():
        for _, path in store.list_image_dirs():
            partial = layouts.Layout(path).partial_dir
            try:
                names = sorted(os.listdir(partial))
            except FileNotFoundError:
                continue
            for name in names:
                if _HEX.fullmatch(name) and (force or store.is_leftover_old(partial / name)) \
                        and _unlink_unlocked(partial / name):
                    deleted.append("sha256:" + name)
            with contextlib.suppress(OSError):
                os.rmdir(partial)  # if nothing is left in it
    return deleted


def _unlink_unlocked(path: Path) -> bool:
    """Unlink the regular file `path` unless a writer holds its flock; return whether it went."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or a symlink (which no pull makes)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
        return True
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(fd)


def referenced(layout: layouts.Layout) -> set[str]:
    """Return every digest index.json reaches: manifests, nested indexes, configs, layers.

    Raise MinictError if a manifest it names cannot be read: its blobs would
    look unreferenced, so nothing may be deleted.
    """
    seen: set[str] = set()
    # (descriptor, is it a manifest or an index?): configs and layers are leaves.
    todo = [(d, True) for d in layout.read_index()["manifests"] if isinstance(d, dict)]
    while todo:
        descriptor, parent = todo.pop()
        digest = mediatypes.check_digest(descriptor.get("digest"))
        if digest in seen:
            continue
        seen.add(digest)
        if not parent:
            continue
        document = layout.read_json_blob(digest)
        if mediatypes.is_index(descriptor.get("mediaType"), document):
            todo += [(c, True) for c in document.get("manifests") or [] if isinstance(c, dict)]
        else:
            leaves = [document.get("config"), *(document.get("layers") or [])]
            todo += [(c, False) for c in leaves if isinstance(c, dict)]
        if isinstance(document.get("subject"), dict):
            todo.append((document["subject"], False))  # kept, need not be here
    return seen


def _sweep(layout: layouts.Layout) -> list[str]:
    """Delete `layout`'s unreferenced blobs (the sweep lock held); return their digests."""
    try:
        keep = referenced(layout)
    except MinictError as err:
        log.warn(f"not deleting blobs of {layout.path}: {err.message}")
        return []
    deleted = []
    try:
        names = sorted(os.listdir(layout.blobs_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        digest = "sha256:" + name
        if digest in keep or not _HEX.fullmatch(name):
            continue  # referenced, or not a blob (a temporary file of a killed write)
        try:
            os.unlink(layout.blobs_dir / name)
        except FileNotFoundError:
            continue
        deleted.append(digest)
    if not keep:
        _remove_layout(layout)
    return deleted


def _remove_layout(layout: layouts.Layout) -> None:
    """Delete an image layout without tags, and its parents that are left empty.

    Only the layout's own entries go: a nested repository (images/a/b inside
    images/a) stays.
    """
    from minict.rmtree import remove_tree  # stays on one file system, follows no symlink

    for sub in (layout.path / store.LAYOUT_BLOBS_NAME, layout.partial_dir):
        remove_tree(sub)
    for name in _LAYOUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.path / name)
    base = store.images_dir()
    path = Path(layout.path)
    while path != base and base in path.parents:
        try:
            os.rmdir(path)
        except OSError:  # not empty: another repository lives below
            return
        path = path.parent
