"""TrainConfig: every setting of a training run, in one frozen dataclass.

The command line maps its options onto these fields one to one, and the run folder
keeps a copy as ``config.json`` so a run can be understood (and repeated) later.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from keras_siamese.errors import ConfigError, DataError
from keras_siamese.outputs import is_inside

LOSSES = ("softmax", "contrastive", "bce", "triplet", "vae")
DATASETS = ("mnist", "fashion_mnist")  # built in; also tfds:NAME or a class-folder path
BACKBONES = ("small", "resnet")
STRATEGIES = ("default", "mirrored", "multi-worker")
# "random": the study's offline pairs/triplets; the rest mine P x K batches online.
MINING = {"softmax": ("random",), "bce": ("random",), "vae": ("random",),
          "contrastive": ("random", "hard-negative"),
          "triplet": ("random", "batch-all", "batch-hard", "semi-hard")}


DATA_FINGERPRINT = "data_fingerprint"  # config.json's record of the data (data.fingerprint)
# Upper bounds that keep a typo (an extra zero or two) from reaching TensorFlow or the OS.
MAX_EMBEDDING_DIM = 4096
MAX_IMAGE_SIZE = 1024
MAX_GIF_FRAME_MS = 655350  # GIF stores frame durations as 16-bit centiseconds
MAX_SEED = 2**32 - 1  # numpy's and keras.utils.set_random_seed's limit
MAX_NAME_BYTES = 200  # run folder names; file systems allow 255 bytes, staging adds some

# Every loss, and every loss with an online mining rule: the columns ``reproduce`` offers.
VARIANTS = LOSSES + tuple(f"{loss}-{rule}" for loss, rules in MINING.items()
                          for rule in rules if rule != "random")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; invalid values raise :class:`ConfigError`."""

    loss: str = "contrastive"
    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    margin: float = 1.0
    embedding_dim: int = 2
    seed: int = 0
    limit: int | None = None
    data_dir: str | None = None
    output_dir: str = "output"
    log_dir: str = "logs"
    run_name: str | None = None
    overwrite: bool = False
    frames: bool = True  # latent frames and GIF
    frame_images: int = 2000  # fixed test images shown by the frames and the projector
    gif_frame_ms: int = 500
    projector: bool = True
    projector_every: int = 0  # also log the projector every K epochs; 0: only at the end
    holdout_classes: tuple[int, ...] = ()  # classes left out of training, scored apart
    eval_every: int = 0  # also log the metrics to TensorBoard every K epochs; 0: only at the end
    export: bool = True  # write the embedding net as a SavedModel (run_dir/saved_model)
    mining: str = "random"  # see MINING; online mining trains on P x K batches
    classes_per_batch: int = 8  # P of the P x K batches (online mining only)
    images_per_class: int = 16  # K of the P x K batches (online mining only)
    image_size: int | None = None  # square side images are read at; None: see data.py
    test_split: float = 0.2  # share of each class tested on, where a dataset has no test split
    backbone: str = "small"  # see models.BACKBONES
    strategy: str = "default"  # tf.distribute strategy, see keras_siamese.distribute

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if not (self.dataset in DATASETS or self.dataset.startswith("tfds:")
                or os.sep in self.dataset or os.path.isdir(self.dataset)):
            raise ConfigError(f"unknown dataset {self.dataset!r}: choose {', '.join(DATASETS)}, "
                              "tfds:NAME or a folder with one sub-folder of images per class")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}: choose one of "
                              f"{', '.join(BACKBONES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: choose one of "
                              f"{', '.join(STRATEGIES)}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"--image-size must be >= 16, got {self.image_size}")
        if self.image_size is not None and self.loss == "vae" and self.image_size % 4:
            raise ConfigError(f"--image-size {self.image_size}: the VAE's decoder needs a "
                              "multiple of 4")
        if not 0 < self.test_split < 1:
            raise ConfigError(f"--test-split must be between 0 and 1, got {self.test_split}")
        if self.mining not in MINING[self.loss]:
            raise ConfigError(f"--mining {self.mining!r} does not apply to --loss {self.loss}: "
                              f"choose one of {', '.join(MINING[self.loss])}")
        if self.classes_per_batch < 2 or self.images_per_class < 2:
            raise ConfigError("--classes-per-batch and --images-per-class must be >= 2, got "
                              f"{self.classes_per_batch} and {self.images_per_class}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be <= {MAX_IMAGE_SIZE}, got {self.image_size}")
        _require_positive("epochs", self.epochs)
        _require_positive("batch size", self.batch_size)
        _require_positive("learning rate", self.learning_rate)
        _require_positive("margin", self.margin)
        _require_positive("embedding dimension", self.embedding_dim)
        if self.limit is not None:
            _require_positive("limit", self.limit)
        for what, value in (("learning rate", self.learning_rate), ("margin", self.margin)):
            if value == float("inf"):
                raise ConfigError(f"{what} must be a finite number, got {value}")
        if self.embedding_dim > MAX_EMBEDDING_DIM:
            raise ConfigError(f"embedding dimension must be <= {MAX_EMBEDDING_DIM}, got "
                              f"{self.embedding_dim}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        _require_positive("--frame-images", self.frame_images)
        _require_positive("--gif-frame-ms", self.gif_frame_ms)
        if self.gif_frame_ms > MAX_GIF_FRAME_MS:
            raise ConfigError(f"--gif-frame-ms must be <= {MAX_GIF_FRAME_MS} (GIF's longest "
                              f"frame), got {self.gif_frame_ms}")
        if self.projector_every < 0:
            raise ConfigError(f"--projector-every must be >= 0, got {self.projector_every}")
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.run_name is not None and (
            not self.run_name or "/" in self.run_name or self.run_name.startswith(".")
            or "\0" in self.run_name
        ):
            raise ConfigError(
                f"run name {self.run_name!r} must be a plain folder name (no '/', not hidden)"
            )
        if len(os.fsencode(self.name)) > MAX_NAME_BYTES:
            raise ConfigError(f"run name {self.name[:40]!r}... is {len(os.fsencode(self.name))} "
                              f"bytes long: give a --run-name of at most {MAX_NAME_BYTES}")
        if is_inside(self.run_dir, self.tensorboard_dir) or is_inside(self.tensorboard_dir,
                                                                      self.run_dir):
            raise ConfigError(f"the run folder {self.run_dir} and its TensorBoard folder "
                              f"{self.tensorboard_dir} overlap: give --output-dir and "
                              "--log-dir that are apart")

    @property
    def online(self) -> bool:
        """Whether training mines P x K batches online (rather than offline pairs/triplets)."""
        return self.mining != "random"

    @property
    def training_batch_size(self) -> int:
        """Examples per training step: ``--batch-size``, or P x K with online mining."""
        return self.classes_per_batch * self.images_per_class if self.online else \
            self.batch_size

    @property
    def variant(self) -> str:
        """``<loss>`` or ``<loss>-<mining>``, e.g. ``triplet-batch-hard``."""
        return f"{self.loss}-{self.mining}" if self.online else self.loss

    @property
    def dataset_name(self) -> str:
        """The dataset as a short name: ``mnist``, ``cifar10`` for ``tfds:cifar10``, the
        folder's name for a class-folder path."""
        if self.dataset.startswith("tfds:"):
            return self.dataset[len("tfds:"):].replace("/", "-")
        if self.dataset in DATASETS:
            return self.dataset
        from keras_siamese.image_folders import display_name  # a non-UTF-8 name, escaped

        return display_name(os.path.basename(os.path.abspath(self.dataset)))

    @property
    def name(self) -> str:
        """The run's folder name: ``--run-name`` or ``<variant>_<dataset name>``."""
        return self.run_name or f"{self.variant}_{self.dataset_name}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.log_dir) / self.name

    def to_json(self, data_fingerprint: dict | None = None) -> str:
        """The settings as ``config.json`` holds them, with the run's data fingerprint."""
        settings = dataclasses.asdict(self)
        if data_fingerprint is not None:
            settings[DATA_FINGERPRINT] = data_fingerprint
        return json.dumps(settings, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source) -> tuple["TrainConfig", dict | None]:
        """``(config, data fingerprint or None)`` from a ``config.json``'s text; DataError
        naming ``source`` for anything that is not a run's settings of this version."""
        try:
            settings = json.loads(text)
        except ValueError as error:
            raise DataError(f"{source} is not valid JSON ({error}): not a run's settings") \
                from None
        if not isinstance(settings, dict):
            raise DataError(f"{source} holds a JSON {type(settings).__name__}, not a run's "
                            "settings (a JSON object)")
        fingerprint = settings.pop(DATA_FINGERPRINT, None)
        fields = {field.name: field.type for field in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise DataError(f"{source} has settings this version does not know "
                            f"({', '.join(unknown)}): made by another version?")
        for name, value in settings.items():
            if not _has_type(value, fields[name]):
                raise DataError(f"{source}: {name} is {json.dumps(value)}, not a "
                                f"value of type {fields[name]}; repair or remove the file")
        settings["holdout_classes"] = tuple(settings.get("holdout_classes", ()))
        if not isinstance(fingerprint, (dict, type(None))):
            raise DataError(f"{source}: {DATA_FINGERPRINT} is not a JSON object")
        try:
            return cls(**settings), fingerprint
        except ConfigError as error:
            raise DataError(f"{source}: {error}") from None


_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _has_type(value, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``annotation`` (``int | None``, ...)."""
    if annotation == "tuple[int, ...]":
        return isinstance(value, list) and all(_has_type(v, "int") for v in value)
    for part in annotation.split(" | "):
        if part == "None" and value is None:
            return True
        kinds = _JSON_TYPES.get(part, ())
        if isinstance(value, kinds) and (part == "bool" or not isinstance(value, bool)):
            return True
    return False


def _require_positive(what: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{what} must be > 0, got {value}")
