"""A layer blob's uncompressed bytes: inflated on a second thread, and hashed.

    with LayerStream(blob_path, mediatypes.LAYER_MEDIA_TYPES[media_type]) as stream:
        piece = stream.read_piece()     # b"" at the end; stream.diff_id then set

The first of the three stages of applying a layer (layerstream -> tar ->
apply): it owns the compressions a layer may have (gzip, zstd, none; the
media types that name them), the inflate thread, and the layer's diff_id.
It reads one blob file and writes nothing.

A layer is a few hundred kilobytes that may inflate to gigabytes: the thread
hands over at most `_PIECE_MAX` bytes at a time and keeps at most
`_QUEUE_PIECES` of them waiting, so a gzip bomb costs time, never memory.
gzip goes through ISA-L when its wheel is installed (~3x zlib); the
decompressors release the GIL, so the inflating runs on the second core
while the tar reader and the applier run on the first.
"""

import hashlib
import queue
import threading

from minict.errors import UnpackError

_READ_SIZE = 1 << 20  # compressed bytes read at a time
_PIECE_MAX = 1 << 20  # most uncompressed bytes handed over at a time (bounds a gzip bomb)
_QUEUE_PIECES = 16  # pieces buffered between the threads (~16 MiB)


def _inflate_gzip(f):
    """Yield the uncompressed pieces of a gzip file (all its members, as pigz may write)."""
    try:
        from isal import isal_zlib as zlib  # ISA-L inflates ~3x faster than zlib
    except ImportError:  # a platform without isal wheels still works, only slower
        import zlib
    inflater = zlib.decompressobj(31)
    fed = False  # whether the current gzip member has had any input
    while True:
        data = f.read(_READ_SIZE)
        if not data:
            break
        while data:
            fed = True
            piece = inflater.decompress(data, _PIECE_MAX)
            if piece:
                yield piece
            if inflater.eof:
                data = inflater.unused_data
                inflater, fed = zlib.decompressobj(31), False
            else:
                data = inflater.unconsumed_tail
    if fed and not inflater.eof:
        raise ValueError("gzip stream is truncated")


def _inflate_zstd(f):
    """Yield the uncompressed pieces of a zstd file (all its frames)."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=_READ_SIZE,
                                                        read_across_frames=True)
    while piece := reader.read(_PIECE_MAX):
        yield piece


def _read_plain(f):
    while piece := f.read(_PIECE_MAX):
        yield piece


_DECOMPRESSORS = {"gzip": _inflate_gzip, "zstd": _inflate_zstd, None: _read_plain}


class LayerStream:
    """A layer blob's uncompressed bytes, inflated on a second thread, and hashed.

    Use as a context manager; `read_piece()` returns the next piece (b"" at the
    end) and re-raises the worker's failure; `diff_id` is the sha256 of all
    uncompressed bytes once the end was read.
    """

    def __init__(self, path, compression: str | None):
        if compression not in _DECOMPRESSORS:
            raise UnpackError(f"unsupported layer compression {compression!r}")
        self.path = path
        self.diff_id: str | None = None
        self._digest = hashlib.sha256()
        self._decompress = _DECOMPRESSORS[compression]
        self._queue: queue.Queue = queue.Queue(_QUEUE_PIECES)
        self._stopped = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="inflate", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            with open(self.path, "rb") as f:
                for piece in self._decompress(f):
                    if not self._put(piece):
                        return
            self._put(b"")
        except BaseException as err:  # noqa: BLE001 -- handed to the reading thread, raised there
            self._put(err)

    def read_piece(self) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            if isinstance(item, OSError):
                raise UnpackError(f"cannot read layer blob {self.path}: {item.strerror or item}")
            raise UnpackError(f"cannot decompress layer blob {self.path}: {item}")
        if item:
            # Hashed here, not by the inflating thread: inflate is the longer
            # task of the two, and update() releases the GIL either way.
            self._digest.update(item)
        else:
            self._done = True
            self.diff_id = "sha256:" + self._digest.hexdigest()
        return item

    def close(self):
        """Stop the worker (it may be blocked handing over a piece) and wait for it."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
