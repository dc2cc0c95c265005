"""Pull an image from a registry into its OCI image layout: the one module joining both.

    1. If index.json already names the tag, with the registry digest it had,
       and every blob is present: one HEAD, and stop (the warm re-pull).
    2. GET the manifest; from an index pick this host's platform (or
       --platform); refuse schema 1 and anything over 4 MiB.
    3. Convert a Docker schema 2 manifest to OCI media types, as skopeo does.
    4. Download the config and layers in parallel, each verified before it
       gets its name, resuming cut-off downloads with Range requests.
    5. Store the manifest, then point the tag at it in index.json.

Nothing is listed before step 5, so a failed pull leaves no image behind.
"""

import hashlib
import threading
import time

from minict import errors, fsutil, log
from minict.errors import MinictError, PullError, shorten
from minict.image import auth, foreign, http_errors, progress, registry
from minict.image.layout import SOURCE_DIGEST, SOURCE_PLATFORM, DigestMismatch, DiskFull, Layout
from minict.image.mediatypes import (  # pull.X names kept: the pull's unit tests call them here
    OCI_MANIFEST,
    check_descriptor,
    check_manifest,
    choose_platform,
    classify,
    docker_to_oci,
    host_platform,
    parse_platform,
)
from minict.image.reference import Reference
from minict.image.timeouts import TooSlow

CHUNK = 512 * 1024


def pull(ref: Reference, *, platform: str | None, insecure: bool, jobs: int) -> None:
    """Pull `ref` into its image layout; raise MinictError (of the pull stage)."""
    with errors.stage(PullError):
        Puller(ref, platform=platform, insecure=insecure, jobs=jobs).run()



def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the pull --------------------------------------------------------------

class Cancelled(Exception):
    """Another download failed; this one stops."""


class Puller:
    """One pull of one reference into one layout."""

    def __init__(self, ref: Reference, *, platform: str | None, insecure: bool, jobs: int):
        self.ref = ref
        self.want = parse_platform(platform) if platform else host_platform()
        self.jobs = max(1, jobs)
        self.layout = Layout.for_reference(ref)
        self.registry = registry.Registry(
            ref.endpoint, ref.path, insecure=insecure,
            credentials=lambda: auth.lookup(ref.domain), jobs=self.jobs)
        self.stop = threading.Event()
        # Set when a download filled the disk: the others then drop their partial files too.
        self.disk_full = threading.Event()
        self.progress = None

    def run(self) -> None:
        from minict.image import gc as images

        # From the first look at the layout to the tag: blobs found present
        # must stay so until index.json names them (gc.py).
        try:
            with images.using():
                if self._up_to_date():
                    log.debug(f"{self.ref.familiar()} is up to date")
                    return
                self._pull()
        finally:
            self.registry.close()

    # -- the warm path

    def _up_to_date(self) -> bool:
        """Return whether the layout already holds what the registry has for the reference."""
        stored = self._stored()
        if stored is None:
            return False
        source = stored["annotations"][SOURCE_DIGEST]
        if self.ref.digest is not None:
            # Content addressed: what was verified once cannot change.
            return source == self.ref.digest
        current = self.registry.manifest_digest(self.ref.tag)
        log.debug(f"tag {self.ref.tag} is {current} at the registry, {source} here")
        return current == source

    def _stored(self) -> dict | None:
        """Return index.json's descriptor for the reference if its image is complete here."""
        if not self.layout.exists():
            return None
        for name, descriptor in self.layout.refs():
            if name != self.ref.ref_name:
                continue
            annotations = descriptor.get("annotations") or {}
            if SOURCE_DIGEST not in annotations:
                return None
            if annotations.get(SOURCE_PLATFORM, self.want) != self.want:
                log.debug(f"stored {name} is {annotations[SOURCE_PLATFORM]}, not {self.want}")
                return None
            try:
                manifest = self.layout.read_json_blob(descriptor["digest"])
                config, layers = check_manifest(manifest, "stored manifest")
            except (MinictError, KeyError):
                return None
            missing = [d["digest"] for d in [config, *layers]
                       if not self.layout.has_blob(d["digest"], d["size"])]
            if missing:
                log.debug(f"stored {name} lacks {len(missing)} blob(s)")
                return None
            return descriptor
        return None

    # -- the full pull

    def _pull(self) -> None:
        ref = self.ref
        what = ref.familiar()
        data, media, header_digest = self.registry.manifest(ref.digest or ref.tag)
        source = sha256(data)
        if ref.digest is not None and source != ref.digest:
            raise PullError(f"{what}: the registry sent a manifest with digest {source}")
        if header_digest and header_digest.startswith("sha256:") and header_digest != source:
            raise PullError(f"{what}: the manifest's digest is {source}, but the registry "
                            f"says {shorten(header_digest, 80)}")
        kind, doc = classify(data, media, what)
        annotations = {SOURCE_DIGEST: source}
        if kind == "index":
            entry = check_descriptor(choose_platform(doc, self.want, what), what)
            log.debug(f"platform {self.want}: manifest {entry['digest']}")
            data, media, _ = self.registry.manifest(entry["digest"])
            if sha256(data) != entry["digest"] or len(data) != entry["size"]:
                raise PullError(f"{what}: manifest {entry['digest']} does not match its digest "
                                "or size")
            kind, doc = classify(data, entry.get("mediaType") or media, what)
            if kind == "index":
                raise PullError(f"{what}: an index inside an index is not supported")
            annotations[SOURCE_PLATFORM] = self.want
        config, layers = check_manifest(doc, what)
        if kind == "docker":
            data = docker_to_oci(doc)
            log.debug(f"converted the Docker manifest to OCI: {sha256(data)}")

        self.layout.init()
        self._download_all([("blob", d) for d in layers] + [("config", config)])
        self.layout.read_json_blob(config["digest"])  # a config that is not a JSON object fails here
        digest = self.layout.put_blob_bytes(data)
        fsutil.fsync_dir(self.layout.blobs_dir)  # the blobs' names, before index.json names them
        self.layout.tag({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data),
                         "annotations": annotations}, ref.ref_name)
        log.debug(f"tagged {ref.ref_name} -> {digest} in {self.layout.path}")

    def _download_all(self, blobs: list[tuple[str, dict]]) -> None:
        """Download every blob not present yet, `jobs` at a time; raise the first failure."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        todo, seen = [], set()
        with progress.for_this_terminal() as self.progress:
            for kind, d in blobs:
                if d["digest"] in seen:
                    continue
                seen.add(d["digest"])
                if self.layout.has_blob(d["digest"], d["size"]):
                    log.debug(f"blob {d['digest']} is present; not downloading it")
                    self.progress.skipped(kind, d["digest"], d["size"])
                else:
                    todo.append((kind, d))
            if not todo:
                return
            with ThreadPoolExecutor(max_workers=min(self.jobs, len(todo)),
                                    thread_name_prefix="blob") as pool:
                futures = [pool.submit(self._download, kind, d) for kind, d in todo]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:
                    # On a failure (or ^C) the others stop at their next chunk.
                    if not all(f.done() and f.exception() is None for f in futures):
                        self.stop.set()
                        for f in futures:
                            f.cancel()
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
            real = [e for e in errors if not isinstance(e, Cancelled)]
            if real:
                raise real[0]

    def _download(self, kind: str, d: dict) -> None:
        """Download one blob into the layout, resuming and retrying; raise PullError."""
        digest, size = d["digest"], d["size"]
        with self.layout.blob_writer(digest, size) as writer:
            if writer.present:
                log.debug(f"blob {digest} is present (another pull stored it)")
                self.progress.skipped(kind, digest, size)
                return
            if writer.offset:
                log.debug(f"resuming blob {digest} at byte {writer.offset} of {size}")
            task = self.progress.start(kind, digest, size, writer.offset)
            resumed = writer.offset > 0
            failures = 0
            source = None  # a foreign layer's URL, when that served it
            while True:
                before = writer.offset
                try:
                    if self.stop.is_set():
                        raise Cancelled()
                    if not writer.complete():
                        source = self._fetch(writer, task, d)
                    writer.commit()
                    break
                except DiskFull:
                    self.disk_full.set()
                    raise
                except Cancelled:
                    if self.disk_full.is_set():
                        writer.discard()  # resuming it later would need the room it takes
                    raise
                except DigestMismatch as err:
                    if not resumed:
                        raise DigestMismatch(foreign.mismatch(err.message, source)) from None
                    # Kept bytes from an earlier attempt may be what was wrong.
                    log.debug(f"blob {digest} failed its check after resuming; downloading it again")
                    resumed = False
                    task.restart(0)
                except _Interrupted as err:
                    # A body below the speed limit counts as a failure though it brought
                    # bytes: else a trickle would be resumed for ever.
                    failures = 0 if writer.offset > before and not err.slow else failures + 1
                    # The one retry policy's count and backoff (http_errors.RETRY), for bodies.
                    if failures >= http_errors.RETRY.attempts:
                        raise PullError(f"fetching blob {digest}: {err}") from None
                    wait = http_errors.RETRY.backoff(failures) if failures else 0
                    log.debug(f"blob {digest} cut off at byte {writer.offset} ({err}); "
                              f"resuming in {wait:.1f}s")
                    time.sleep(wait)
            task.finish()

    def _fetch(self, writer, task, d: dict) -> str | None:
        """Stream the rest of blob `d` into `writer`; return the foreign URL that served it, if any.

        Raise _Interrupted if the body breaks.
        """
        offset = writer.offset
        if offset:
            log.debug(f"blob {writer.digest}: asking for bytes {offset}- (Range)")
        response, source = foreign.open_layer(self.registry, d, offset)
        with response:
            if offset and response.status_code == 206:
                start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(offset):
                    log.debug(f"blob {writer.digest}: Content-Range does not start at {offset}; "
                              "starting over")
                    writer.restart()
                    task.restart(0)
                    raise _Interrupted("the registry answered a different range")
            elif offset:
                log.debug(f"blob {writer.digest}: no range support (HTTP {response.status_code}); "
                          "starting over")
                writer.restart()
                task.restart(0)
                if response.status_code == 416:
                    raise _Interrupted("the registry refused the range")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > writer.size - writer.offset:
                raise PullError(f"fetching blob {writer.digest}: the registry sends "
                                f"{shorten(length, 40)} bytes for the {writer.size - writer.offset} "
                                "its descriptor leaves")
            while True:
                if self.stop.is_set():
                    raise Cancelled()
                try:
                    chunk = response.read1(CHUNK)
                except http_errors.NETWORK_ERRORS as err:
                    raise _Interrupted(http_errors.describe(err, self.registry.endpoint),
                                       slow=isinstance(err, TooSlow)) from None
                if not chunk:
                    break
                writer.write(chunk)
                task.advance(len(chunk))
        if not writer.complete():
            raise _Interrupted(f"the body ended after {writer.offset} of {writer.size} bytes")
        return source


class _Interrupted(Exception):
    """A blob's body broke off (or crawled: `slow`); the download resumes where it stopped."""

    def __init__(self, message: str, slow: bool = False):
        super().__init__(message)
        self.slow = slow
