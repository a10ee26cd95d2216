"""A gallery index: the embeddings of known, labelled examples, searched by new images.

``Index.build(run, gallery)`` embeds a gallery (:mod:`keras_siamese.gallery`) with a
finished run's embedding net; ``add`` appends more images or whole new classes without
retraining (the one-shot use: a new class arrives with one to five examples);
``search`` returns the k nearest gallery items of each query; ``classify`` votes among
them and answers ``unknown`` beyond a distance threshold (open-set recognition).

The open-set threshold (``unknown_threshold``) is the gallery's own: the
``UNKNOWN_QUANTILE`` quantile of its items' distances to their nearest *other* gallery item
(leave-one-out, on up to ``THRESHOLD_SAMPLE`` items drawn with a fixed seed), so about 1 %
of images like the gallery's are called unknown. Why not the run's calibrated pair
threshold: that one separates same-class from different-class *pairs* drawn at random,
while a query's nearest neighbour in a gallery of thousands is far nearer than a random
pair of its class, so almost nothing would ever be unknown (``benchmarks/open_set.py``
measured 0.0 % of an unseen digit called unknown at the pair threshold).

Format (version 1): the folder ``INDEX_DIR`` holds one file, ``index.npz`` (NumPy's zip
of arrays, read without pickle), replaced atomically on every save, so a save that is
killed leaves the old index or the new one, never a mix:

- ``embeddings``: float32 (N, D);
- ``labels``: int32 (N,), positions in ``class_names``;
- ``sources``: str (N,), where each item came from (file path, ``mnist:train[i]``, ...);
- ``meta``: a JSON string: ``format`` ("keras-siamese-index"), ``version`` (1), ``run``
  (the absolute run folder), ``model_fingerprint`` (sha256 of the embedding net's
  weights, :func:`model_fingerprint`), ``input_shape``, ``distance`` ("euclidean"),
  ``class_names``, ``unknown_threshold`` and ``unknown_quantile`` (above; the threshold
  is null for a gallery of one item).

The approximate backend's HNSW graph (:mod:`keras_siamese.approximate`) takes minutes to
build for a million items, so the first approximate search of a saved index builds it
and saves it beside ``index.npz`` as ``hnsw-<digest>.faiss``, where the digest (sha256 of
the embeddings and the graph's settings) ties it to exactly these embeddings: later
searches load it, and a changed index (``--add``) gets a new graph (the stale one is
removed). Losing that file loses nothing but time.

Before embedding queries, the index checks that the run's model still has the fingerprint
it was built with: a run retrained or overwritten since would give embeddings in another
space, and the answers would be nonsense.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from keras_siamese import neighbours
from keras_siamese.errors import ConfigError, DataError, OutputError
from keras_siamese.gallery import Gallery
from keras_siamese.metrics import majority_vote
from keras_siamese.outputs import atomic_path

FORMAT = "keras-siamese-index"
VERSION = 1
FILE = "index.npz"
UNKNOWN = "unknown"
UNKNOWN_QUANTILE = 0.99
THRESHOLD_SAMPLE = 10_000


def model_fingerprint(embedding) -> str:
    """sha256 over the embedding net's weights (shapes and float32 bytes, in order)."""
    digest = hashlib.sha256()
    for weight in embedding.get_weights():
        digest.update(str(weight.shape).encode())
        digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The k nearest gallery items of each query, nearest first: gallery positions,
    Euclidean distances, and class names."""

    indices: np.ndarray  # int64 (n, k)
    distances: np.ndarray  # float64 (n, k)
    classes: list[list[str]]


@dataclasses.dataclass
class Index:
    """Embeddings of a gallery with their labels, made by one run's model (module doc)."""

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    run: str
    fingerprint: str
    input_shape: tuple[int, int, int]
    unknown_threshold: float | None = None
    folder: Path | None = dataclasses.field(default=None, compare=False)  # where it is saved

    @classmethod
    def build(cls, run_dir, gallery: Gallery, embedding=None) -> "Index":
        """Embed ``gallery`` with the run's embedding net (loaded unless given)."""
        from keras_siamese.run_folder import load_embedding

        embedding = embedding if embedding is not None else load_embedding(run_dir)
        index = cls(np.zeros((0, embedding.output.shape[-1]), np.float32),
                    np.zeros(0, np.int32), [], [], str(Path(run_dir).absolute()),
                    model_fingerprint(embedding), tuple(embedding.input_shape[1:]))
        index._append(embedding, gallery)
        return index

    def add(self, gallery: Gallery, embedding=None) -> "Index":
        """Append ``gallery``: images of known classes join them, new class names become
        new classes. The run's model must be the one the index was built with."""
        self._append(self.embedding(embedding), gallery)
        return self

    def _append(self, embedding, gallery: Gallery) -> None:
        from keras_siamese.models import embed_images

        vectors = embed_images(embedding, gallery.images)
        if not np.isfinite(vectors).all():
            raise DataError("the gallery's embeddings contain NaN or inf: the model diverged")
        for name in gallery.class_names:
            if name not in self.class_names:
                self.class_names.append(name)
        position = {name: i for i, name in enumerate(self.class_names)}
        labels = np.array([position[name] for name in gallery.classes], np.int32)
        self.embeddings = np.concatenate([self.embeddings, vectors.astype(np.float32)])
        self.labels = np.concatenate([self.labels, labels])
        self.sources = self.sources + list(gallery.sources)
        self.unknown_threshold = self._gallery_threshold()

    def _gallery_threshold(self) -> float | None:
        """The module doc's open-set threshold of the current gallery."""
        count = len(self.labels)
        if count < 2:
            return None
        picked = np.sort(np.random.default_rng(0).permutation(count)[:THRESHOLD_SAMPLE])
        nearest = np.concatenate([rows for _, rows in neighbours.neighbour_chunks(
            self.embeddings[picked], self.embeddings, 1, skip=picked)])
        distances = neighbours.neighbour_distances(self.embeddings[picked], self.embeddings,
                                                   nearest)
        return float(np.quantile(distances, UNKNOWN_QUANTILE))

    def embedding(self, embedding=None):
        """The run's embedding net, checked to be the one the index was built with."""
        from keras_siamese.run_folder import load_embedding

        if embedding is None:
            if not Path(self.run).is_dir():
                raise DataError(f"the index was built with the run {self.run}, which is gone: "
                                "rebuild the index with siamese-keras index")
            embedding = load_embedding(self.run)
        if model_fingerprint(embedding) != self.fingerprint:
            raise DataError(f"the model of {self.run} has changed since this index was built "
                            "(retrained or overwritten): its embeddings would not match; "
                            "rebuild the index with siamese-keras index")
        return embedding

    def search(self, query_embeddings, k: int = 5, backend: str = "exact") -> SearchResult:
        """The ``k`` nearest gallery items of each query embedding (n, D), nearest first.

        ``exact``: :mod:`keras_siamese.neighbours` (equal distances: lowest position first);
        ``approximate``: :mod:`keras_siamese.approximate` (faiss HNSW)."""
        if not 1 <= k <= len(self.labels):
            raise ConfigError(f"-k must be between 1 and the gallery's {len(self.labels)} "
                              f"items, got {k}")
        queries = np.asarray(query_embeddings, np.float64)
        if backend == "exact":
            found = neighbours.nearest_neighbours(queries, self.embeddings, k)
            distances = neighbours.neighbour_distances(queries, self.embeddings, found)
        elif backend == "approximate":
            found, distances = self.approximate_search().search(queries, k)
        else:
            raise ConfigError(f"unknown backend {backend!r}: choose exact or approximate")
        classes = [[self.class_names[self.labels[i]] for i in row] for row in found]
        return SearchResult(found, distances, classes)

    def approximate_search(self):
        """The HNSW graph of this gallery: loaded from the index folder when saved there
        for these embeddings, else built (and saved there, if the index has a folder)."""
        from keras_siamese import approximate

        digest = hashlib.sha256(np.ascontiguousarray(self.embeddings).tobytes())
        digest.update(f"{approximate.LINKS} {approximate.EF_CONSTRUCTION}".encode())
        path = self.folder / f"hnsw-{digest.hexdigest()[:16]}.faiss" if self.folder else None
        if path is not None and path.is_file():
            try:
                return approximate.ApproximateSearch.load(path)
            except ValueError:
                pass  # damaged: built again below, and replaced
        search = approximate.ApproximateSearch(self.embeddings)
        if path is not None:
            try:
                search.save(path)
                for stale in self.folder.glob("hnsw-*.faiss"):
                    if stale != path:
                        stale.unlink()
            except OSError:
                pass  # a read-only index still searches; it builds the graph each time
        return search

    def open_set_threshold(self) -> float:
        """classify's default ``unknown`` threshold: the gallery's own (module doc), or, for
        a one-item gallery, which has none, the run's decision threshold."""
        if self.unknown_threshold is not None:
            return self.unknown_threshold
        from keras_siamese.run_folder import decision_threshold

        return decision_threshold(self.run)[0]

    def classify(self, query_embeddings, threshold: float | None = None, k: int = 1,
                 backend: str = "exact") -> list[tuple[str, float]]:
        """Per query: the majority class of its ``k`` nearest items (a tie goes to the class
        met first, the nearest) and the nearest distance; ``unknown`` when that distance
        is above ``threshold`` (by default :meth:`open_set_threshold`)."""
        if threshold is None:
            threshold = self.open_set_threshold()
        result = self.search(query_embeddings, k, backend)
        winners = majority_vote(self.labels[result.indices])
        return [(self.class_names[winner] if nearest <= threshold else UNKNOWN, float(nearest))
                for winner, nearest in zip(winners, result.distances[:, 0])]

    def save(self, folder) -> Path:
        """Write the index into ``folder`` (made if missing), atomically (module doc)."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / FILE) as tmp:
                with open(tmp, "wb") as stream:
                    np.savez(stream, embeddings=self.embeddings, labels=self.labels,
                             sources=np.array(self.sources, dtype=str), meta=self._meta())
                    stream.flush()
                    os.fsync(stream.fileno())
        except OSError as error:
            raise OutputError(f"cannot write the index {folder}: "
                              f"{error.strerror or error}") from error
        self.folder = folder
        return folder

    def _meta(self) -> np.ndarray:
        return np.array(json.dumps({
            "format": FORMAT, "version": VERSION, "run": self.run,
            "model_fingerprint": self.fingerprint, "input_shape": list(self.input_shape),
            "distance": "euclidean", "class_names": self.class_names,
            "unknown_threshold": self.unknown_threshold, "unknown_quantile": UNKNOWN_QUANTILE}))

    @classmethod
    def load(cls, folder) -> "Index":
        """The index saved in ``folder``; ConfigError / DataError for anything else."""
        path = Path(folder) / FILE
        if not path.is_file():
            raise ConfigError(f"{folder} is not an index (no {FILE}): make one with "
                              "siamese-keras index RUN GALLERY --out FOLDER")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                meta = json.loads(str(arrays["meta"]))
                embeddings, labels = arrays["embeddings"], arrays["labels"]
                sources = arrays["sources"].tolist()
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise DataError(f"cannot read the index {path}: {error}") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{path} is not a keras-siamese index")
        if meta.get("version") != VERSION:
            raise DataError(f"{path} is an index of format version {meta.get('version')}; "
                            f"this version reads {VERSION}: rebuild it")
        return cls(embeddings, labels, list(meta["class_names"]), sources, meta["run"],
                   meta["model_fingerprint"], tuple(meta["input_shape"]),
                   meta.get("unknown_threshold"), Path(folder))


def check_new_index(folder, overwrite: bool) -> None:
    """ConfigError unless ``folder`` can take a new index: missing, empty, or holding an
    index that ``overwrite`` allows to replace (never a folder of other files)."""
    folder = Path(folder)
    if folder.is_file():
        raise ConfigError(f"--out {folder} is a file: give a folder for the index")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / FILE).is_file():
        raise ConfigError(f"--out {folder} holds other files, not an index: choose a new "
                          "folder")
    if not overwrite:
        raise ConfigError(f"--out {folder} already holds an index: pass --overwrite to "
                          "replace it, or --add to extend it")


RESULT_SUFFIXES = (".csv", ".json")
RESULT_COLUMNS = ("query", "rank", "distance", "class", "source")


def write_results(path, rows: list[dict]) -> None:
    """Search results (one row per query and rank, :data:`RESULT_COLUMNS`) as CSV or JSON,
    written atomically."""
    import csv

    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
            if path.suffix.lower() == ".json":
                json.dump(rows, stream, indent=2)
            else:
                writer = csv.DictWriter(stream, RESULT_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
