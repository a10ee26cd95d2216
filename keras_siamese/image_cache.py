"""Class-folder images larger than memory: decoded once into a raw file, read row by row.

A folder of JPEGs is slow to decode and, decoded, may not fit in memory. So the first run
decodes every image once, in parallel and exactly as :func:`image_folders.read_image` does
(same conversion, same resize), into one uint8 file of ``N x H x W x C`` bytes, row ``i``
being file ``i`` of :func:`image_folders.list_class_folders`. Later runs reuse it. What a
run holds in memory is then the labels, the row numbers and the rows of the batches in
flight (the streams' prefetch buffers), not the dataset.

The cache lives in ``$KERAS_SIAMESE_CACHE/images`` (default ``~/.cache/keras_siamese``),
one folder per key: a sha256 of every file's path, size and modification time and the
requested image size, so a folder that gains, loses or changes a file gets a new cache
(the stale one of the same folder is deleted then). The pixel file is written under a
temporary name and renamed into place, and its ``images.json`` (the shape) is written
last, the same way: an interrupted build leaves no cache that could be read as whole.

:class:`DiskImages` stands in for the uint8 array: ``len``, ``shape``, ``dtype``, and
selecting rows (a slice, a boolean mask, row numbers) gives another :class:`DiskImages`
without reading anything; ``numpy.asarray`` reads the selected rows. Rows are read with
``os.preadv`` into a buffer of just those rows: a ``numpy.memmap`` would leave every page
it touched counted in the process's resident memory, which would grow to the dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_siamese.errors import DataError, OutputError

log = logging.getLogger(__name__)

CACHE_ENV = "KERAS_SIAMESE_CACHE"
FORMAT = 1  # bump when the decoded pixels of a file could change: old caches then miss
PIXELS = "images.u8"
META = "images.json"
DECODE_CHUNK = 1024  # images decoded and written at a time: bounds memory while building
# Bytes per block when a consumer walks every image (digests, statistics): a histogram of
# a block takes 8 bytes per value.
READ_BYTES = 4 * 1024**2


class DiskImages:
    """uint8 images ``(N, H, W, C)`` stored row after row in a raw file; ``rows`` are the
    file's rows this view selects, in order (see the module doc)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path, shape, rows: np.ndarray | None = None):
        self.path = Path(path)
        self.image_shape = tuple(int(s) for s in shape[1:])
        self.rows = (np.arange(int(shape[0]), dtype=np.int64) if rows is None
                     else np.asarray(rows, np.int64))
        self.row_bytes = int(np.prod(self.image_shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.image_shape)

    @property
    def size(self) -> int:
        return len(self.rows) * self.row_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"DiskImages({self.path}, shape={self.shape})"

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take(np.asarray([key]))[0]
        if isinstance(key, tuple):  # pixel-level indexing: read the rows first
            return np.asarray(self)[key]
        return DiskImages(self.path, (0, *self.image_shape), self.rows[key])

    def __array__(self, dtype=None, copy=None):
        pixels = self.take(np.arange(len(self.rows)))
        return pixels if dtype is None else pixels.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype)

    def take(self, positions) -> np.ndarray:
        """The images at ``positions`` of this view, read into one new array."""
        rows = self.rows[np.asarray(positions, np.int64)]
        out = np.empty((len(rows), *self.image_shape), np.uint8)
        if not len(rows):
            return out
        flat = memoryview(out.reshape(len(rows), -1))
        size = self.row_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            i = 0
            while i < len(rows):
                # A run of consecutive rows is one read (evaluation walks them in order).
                j = i + 1
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
                _read_exactly(fd, flat[i:j].cast("B"), int(rows[i]) * size, self.path)
                i = j
        finally:
            os.close(fd)
        return out


def _read_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got == 0:
            raise DataError(f"{path}: the image cache is shorter than its images; delete "
                            f"{path.parent} and run again")
        done += got


def chunks(images):
    """``images`` (an array or :class:`DiskImages`, or labels) as consecutive blocks of
    about READ_BYTES, so a pass over all of them holds one block at a time."""
    rows = max(1, READ_BYTES // max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize))
    for start in range(0, len(images), rows):
        yield np.asarray(images[start:start + rows])


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "keras_siamese"
    return Path(base) / "images"


def _key(files, image_size: int | None) -> str:
    """sha256 of what the decoded pixels depend on: each file's path, size and mtime (a
    changed file changes one of them), the requested size and the decoder's FORMAT."""
    digest = hashlib.sha256(f"{FORMAT}\0{image_size}\0".encode())
    for path in files:
        try:
            stat = os.stat(path)
        except OSError as error:
            from keras_siamese.image_folders import shown

            raise DataError(f"{shown(path)}: cannot read this file "
                            f"({error.strerror or error})") from error
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def find(files, image_size: int | None) -> DiskImages | None:
    """The cached images of ``files`` read at ``image_size``, if a whole cache exists."""
    folder = cache_root() / _key(files, image_size)
    try:
        meta = json.loads((folder / META).read_text())
        shape = tuple(meta["shape"])
        if (folder / PIXELS).stat().st_size != int(np.prod(shape)) or shape[0] != len(files):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DiskImages(folder / PIXELS, shape)


def build(files, shape: tuple[int, int, int], image_size: int | None, root) -> DiskImages:
    """Decode ``files`` at ``shape`` (height, width, channels) into a new cache (see the
    module doc) and return it. A file that cannot be read raises read_image's DataError
    naming it; nothing partial is left behind."""
    from keras_siamese import image_folders

    folder = cache_root() / _key(files, image_size)
    pixels = folder / PIXELS
    tmp = folder / f".{PIXELS}.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder, root, image_size)
        log.info("decoding %d images of %s into the image cache %s", len(files),
                 "x".join(map(str, shape)), folder)
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool, open(tmp, "wb") as out:
            for start in range(0, len(files), DECODE_CHUNK):
                part = files[start:start + DECODE_CHUNK]
                for image in pool.map(lambda p: image_folders.read_image(p, *shape), part):
                    out.write(image.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, pixels)
        meta = {"shape": [len(files), *shape], "root": _folder_name(root),
                "image_size": image_size, "format": FORMAT}
        tmp_meta = folder / f".{META}.tmp-{os.getpid()}"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, folder / META)
    except OSError as error:
        raise OutputError(f"cannot write the image cache in {folder} "
                          f"({error.strerror or error}): free some space or point "
                          f"{CACHE_ENV} at a writable folder with room for "
                          f"{len(files) * int(np.prod(shape)) / 1024**3:.1f} GiB") from error
    finally:
        for leftover in (tmp, folder / f".{META}.tmp-{os.getpid()}"):
            try:
                leftover.unlink()
            except OSError:
                pass
        if not (folder / META).exists():  # failed or interrupted: leave no trace
            shutil.rmtree(folder, ignore_errors=True)
    return DiskImages(pixels, (len(files), *shape))


def _folder_name(root) -> str:
    return os.fsdecode(os.path.abspath(os.fspath(root)))


def _remove_stale(keep: Path, root, image_size: int | None) -> None:
    """Delete the caches of the same folder and image size under other keys: made
    before the folder changed, they will never be read again."""
    root = _folder_name(root)
    for other in keep.parent.iterdir():
        if other == keep:
            continue
        try:
            meta = json.loads((other / META).read_text())
        except (OSError, ValueError):
            continue
        if meta.get("root") == root and meta.get("image_size") == image_size:
            shutil.rmtree(other, ignore_errors=True)
