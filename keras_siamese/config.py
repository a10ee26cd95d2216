"""TrainConfig: every setting of a training run, in one frozen dataclass.

Each field carries its command-line help (and choices, metavar...) as metadata, so the
``train`` command is generated from this class with the defaults defined once; the run
folder keeps a copy as ``config.json`` (:meth:`TrainConfig.to_json`, read back with
:meth:`TrainConfig.from_json`) so a run can be understood (and repeated) later.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from keras_siamese import precision
from keras_siamese.callbacks import COLLAPSE_EPOCHS, COLLAPSE_FRACTION
from keras_siamese.errors import ConfigError, DataError
from keras_siamese.outputs import is_inside
from keras_siamese.variants import VARIANTS, default_mining, losses, mining_rules, variant_of

DATASETS = ("mnist", "fashion_mnist")  # built in; also tfds:NAME or a class-folder path
BACKBONES = ("small", "resnet")
STRATEGIES = ("default", "mirrored", "multi-worker")
LR_SCHEDULES = ("cosine", "constant", "step")
PRECISIONS = precision.CHOICES

DATA_FINGERPRINT = "data_fingerprint"  # config.json's record of the data (data.fingerprint)
# Upper bounds that keep a typo (an extra zero or two) from reaching TensorFlow or the OS.
MAX_EMBEDDING_DIM = 4096
MAX_IMAGE_SIZE = 1024
MAX_GIF_FRAME_MS = 655350  # GIF stores frame durations as 16-bit centiseconds
MAX_SEED = 2**32 - 1  # numpy's and keras.utils.set_random_seed's limit
MAX_NAME_BYTES = 200  # run folder names; file systems allow 255 bytes, staging adds some
MAX_SUB_CENTERS = 64
MAX_MEMORY = 100_000  # cross-batch memory slots: more than any built-in training split


def setting(default, help: str, **cli):
    """A TrainConfig field: its default, its ``--option``'s help, and what else the command
    line needs to know (``choices``, ``metavar``, ``aliases``, ``default_text``, ``path``,
    ``switch``: a ``--x/--no-x`` pair rather than a one-way flag)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def _online_rules() -> str:
    rules = [f"{v.mining} ({v.loss})" for v in VARIANTS.values() if v.online]
    return ", ".join(rules)


def _losses_where(test) -> str:
    """The losses (their default rows) for which ``test(variant)`` holds, as text."""
    return ", ".join(v.loss for v in VARIANTS.values() if v.name == v.loss and test(v))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; invalid values raise :class:`ConfigError`."""

    loss: str = setting(
        "contrastive", "; ".join(f"{v.loss}: {v.summary}" for v in VARIANTS.values()
                                 if v.name == v.loss) + ".", choices=losses())
    dataset: str = setting(
        "mnist", "mnist or fashion_mnist (offline from --data-dir, TFDS or the packaged "
        "copies); tfds:NAME, a TFDS image-classification dataset prepared on this machine; "
        "or FOLDER with one sub-folder of PNG/JPEG images per class.",
        metavar="mnist|fashion_mnist|tfds:NAME|FOLDER")
    epochs: int = setting(10, "Passes over the training images (one pair/triplet per image "
                          "and epoch).")
    batch_size: int = setting(128, "Pairs, triplets or images per training step.")
    learning_rate: float = setting(1e-3, "Adam's initial learning rate (see "
                                   "--lr-schedule).", aliases=("--lr",))
    lr_schedule: str = setting(
        "cosine", "How the learning rate moves over the run: cosine: decays to 0 at the last "
        "step; constant: stays; step: x 0.1 every 8 epochs (the study's PyTorch reference, "
        "StepLR(8, 0.1)).", choices=LR_SCHEDULES)
    margin: float | None = setting(
        None, "Margin of the loss (> 0): of the contrastive and triplet losses; m of circle, "
        "arcface (radians) and cosface; delta of proxy-anchor. multi-similarity and supcon "
        "have none.", default_text="the loss's own: 1.0 contrastive and triplet, 0.4 circle, "
        "0.1 proxy-anchor, 0.5 arcface, 0.35 cosface")
    embedding_dim: int = setting(2, "Size of the embedding; plots show a PCA projection "
                                 "when > 2.")
    seed: int = setting(0, "Seed of weights and training pairs; same seed, same run.")
    limit: int | None = setting(None, "Train on a class-balanced subset of N training images "
                                "(quick runs).")
    data_dir: str | None = setting(None, "Folder with the four idx files (or a TFDS data dir) "
                                   "to load from.", path=True)
    output_dir: str = setting("output", "Root of the run folders (model, plots, config, "
                              "history, metrics).", path=True)
    log_dir: str = setting("logs", "Root of the TensorBoard run folders.", path=True)
    run_name: str | None = setting(None, "Name of the run folder.",
                                   default_text="<loss>_<dataset>")
    overwrite: bool = setting(False, "Replace an existing run folder of the same name.")
    frames: bool = setting(True, "Plot the latent space of fixed test images before training "
                           "and after every epoch (frames/*.png, latent.gif, "
                           "latent_embeddings.npz).", switch=True)
    frame_images: int = setting(2000, "Number of fixed test images (same number per class, "
                                "same in every run) shown by the frames and the TensorBoard "
                                "projector.")
    gif_frame_ms: int = setting(500, "Duration of one GIF frame in milliseconds (the last is "
                                "held 4x).")
    projector: bool = setting(True, "Write TensorBoard projector data (embeddings, labels, "
                              "image sprite) into <log-dir>/<run>/projector after the last "
                              "epoch.", switch=True)
    projector_every: int = setting(0, "Also write the projector every K epochs (one entry per "
                                   "epoch); 0: only after the last epoch.")
    holdout_classes: tuple[int, ...] = setting(
        (), "Leave these class numbers out of training and report the metrics on them "
        "separately (e.g. 7,8,9): the one-shot setting.", metavar="C1,C2,...")
    eval_every: int = setting(0, "Also log the embedding metrics to TensorBoard every K "
                              "epochs (they are always computed after the last one).")
    export: bool = setting(True, "Export the embedding net as a TensorFlow SavedModel "
                           "(<run folder>/saved_model) for serving without this package.",
                           switch=True)
    mining: str | None = setting(
        None, "random: offline pairs, triplets or shuffled images (the study's losses, "
        "proxy-anchor, arcface, cosface). Online, on P x K batches: "
        f"{_online_rules()}.", choices=mining_rules(),
        default_text="the loss's own: " + ", ".join(
            f"{v.mining} for {v.loss}" for v in VARIANTS.values() if v.default)
        + ", random for the others")
    classes_per_batch: int = setting(8, "P: classes in each online-mining batch (batch size "
                                     "P x K).")
    images_per_class: int = setting(16, "K: images of each class in each online-mining batch.")
    normalize: bool | None = setting(
        None, "L2-normalise the embedding as the embedding net's last layer, so metrics, "
        "plots, projector, index, export and serving all get the unit vectors it trained "
        "with; their Euclidean distances rank as cosine distances (d^2 = 2 - 2 cos).",
        switch=True, default_text="on for the losses defined on cosine similarity: "
        + _losses_where(lambda v: v.unit_vectors) + "; off for the others")
    sub_centers: int = setting(
        1, "K vectors per class for " + _losses_where(lambda v: v.sub_centers)
        + " (sub-center ArcFace, Deng et al. 2020): an image's cosine to a class is that to "
        "the nearest of them.")
    memory: int = setting(0, "Cross-batch memory (XBM, Wang et al. 2020) for online mining: "
                          "also mine each batch against the last N training embeddings and "
                          "labels (kept in the model, so checkpoints and --resume carry it); "
                          "0: off.")
    memory_warmup: int = setting(1000, "Training steps before the cross-batch memory takes "
                                 "its first entries (the paper starts it after 1k "
                                 "iterations): early embeddings drift fast.")
    image_size: int | None = setting(
        None, "Read images at N x N pixels.", default_text="MNIST-like data keeps 28 x 28; "
        "other data keeps its size if all images share one up to 64 x 64, else 64 x 64")
    test_split: float = setting(0.2, "Share of each class held out for testing (fixed seed), "
                                "for datasets without a test split of their own (class "
                                "folders, some TFDS sets).")
    stream: bool | None = setting(
        None, "Read a class folder's images from disk as batches need them, not all held in "
        "memory: the first run decodes them once into an image cache ($KERAS_SIAMESE_CACHE, "
        "default ~/.cache/keras_siamese), later runs reuse it; same pixels, same results. "
        "--no-stream holds them in memory or refuses.", switch=True,
        default_text="on when the decoded images would take more than half the memory "
        "available; MNIST, Fashion-MNIST and TFDS data are always held in memory")
    backbone: str = setting("small", "small: the study's 2-conv network; resnet: a small "
                            "ResNet (6 residual blocks, batch norm) for larger colour images.",
                            choices=BACKBONES)
    stop_on_collapse: bool = setting(
        True, "Stop training (exit 1, the run folder kept) when the embeddings collapse: "
        f"their spread stays below {COLLAPSE_FRACTION:.0%} of its value before training for "
        f"{COLLAPSE_EPOCHS} epochs in a row (the spread and the pair distances are logged "
        "every epoch).", switch=True)
    strategy: str = setting("default", "tf.distribute: mirrored: this machine's GPUs "
                            "(--batch-size is the global batch); multi-worker: one process "
                            "per machine, each with its TF_CONFIG (see the README); only the "
                            "chief writes outputs.", choices=STRATEGIES)
    precision: str = setting(
        "float32", "Arithmetic of the embedding net: float32; bfloat16 or float16 (Keras mixed "
        "precision: float32 weights, 16-bit compute, float32 embeddings, losses and "
        "metrics); auto: float16 on a GPU, bfloat16 on a CPU with AVX512_BF16 or AMX, else "
        "float32 (config.json records the pick).", choices=PRECISIONS)

    def __post_init__(self):
        self._check_model_and_data()
        self._check_numbers()
        self._check_folders()

    def _check_model_and_data(self) -> None:
        if self.loss not in losses():
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(losses())}")
        if self.mining is None:
            self._fill("mining", default_mining(self.loss))
        if not (self.dataset in DATASETS or self.dataset.startswith("tfds:")
                or os.sep in self.dataset or os.path.isdir(self.dataset)):
            raise ConfigError(f"unknown dataset {self.dataset!r}: choose {', '.join(DATASETS)}, "
                              "tfds:NAME or a folder with one sub-folder of images per class")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}: choose one of "
                              f"{', '.join(BACKBONES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: choose one of "
                              f"{', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: choose one of "
                              f"{', '.join(STRATEGIES)}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"--image-size must be >= 16, got {self.image_size}")
        if self.stream and (self.dataset in DATASETS or self.dataset.startswith("tfds:")):
            raise ConfigError(f"--stream reads class folders from disk; {self.dataset} is "
                              "always held in memory: leave --stream out")
        if not 0 < self.test_split < 1:
            raise ConfigError(f"--test-split must be between 0 and 1, got {self.test_split}")
        if self.mining not in mining_rules(self.loss):
            raise ConfigError(f"--mining {self.mining!r} does not apply to --loss {self.loss}: "
                              f"choose one of {', '.join(mining_rules(self.loss))}")
        self._check_loss_options()
        multiple = self.model_variant.image_multiple
        if self.image_size is not None and self.image_size % multiple:
            raise ConfigError(f"--image-size {self.image_size}: --loss {self.variant} needs a "
                              f"multiple of {multiple}")
        if self.classes_per_batch < 2 or self.images_per_class < 2:
            raise ConfigError("--classes-per-batch and --images-per-class must be >= 2, got "
                              f"{self.classes_per_batch} and {self.images_per_class}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be <= {MAX_IMAGE_SIZE}, got {self.image_size}")
        self._check_memory()

    def _check_memory(self) -> None:
        """``--memory``: a count in range, for a variant that mines against it, on one
        device (its data-dependent limits are the variant's check)."""
        if self.memory < 0:
            raise ConfigError(f"--memory must be >= 0 (0: off), got {self.memory}")
        if self.memory > MAX_MEMORY:
            raise ConfigError(f"--memory must be <= {MAX_MEMORY}, got {self.memory}")
        if self.memory_warmup < 0:
            raise ConfigError(f"--memory-warmup must be >= 0, got {self.memory_warmup}")
        if not self.memory:
            return
        if not self.model_variant.memory:
            usable = ", ".join(v.name for v in VARIANTS.values() if v.memory)
            raise ConfigError(f"--memory applies only to online mining of pairs or triplets "
                              f"({usable}), not to --loss {self.loss} --mining "
                              f"{self.mining}: drop --memory or train one of those")
        if self.strategy != "default":
            raise ConfigError(f"--memory keeps one memory on one device: it does not work "
                              f"with --strategy {self.strategy}")

    def _fill(self, name: str, value) -> None:
        """Set a field the user left to the loss (frozen: only while checking)."""
        object.__setattr__(self, name, value)

    def _check_loss_options(self) -> None:
        """Options whose default is the loss's own take it; those the loss cannot use are
        refused."""
        variant = self.model_variant
        if self.margin is None:
            self._fill("margin", variant.margin)
        elif variant.margin is None:
            raise ConfigError(f"--margin does not apply to --loss {self.loss}: it has no "
                              "margin (its settings are its paper's); drop --margin")
        if self.normalize is None:
            self._fill("normalize", variant.unit_vectors)
        elif not self.normalize and variant.unit_vectors:
            raise ConfigError(f"--no-normalize: --loss {self.loss} is defined on the cosine "
                              "similarity of unit vectors; drop --no-normalize")
        elif self.normalize and not variant.normalizable:
            raise ConfigError(f"--normalize does not apply to --loss {self.loss}: its "
                              "embedding is its posterior's mean, which the ELBO needs "
                              "unconstrained; drop --normalize")
        if self.sub_centers != 1 and not variant.sub_centers:
            raise ConfigError(f"--sub-centers {self.sub_centers}: only "
                              f"{_losses_where(lambda v: v.sub_centers)} have sub-centres, "
                              f"not --loss {self.loss}; drop --sub-centers")
        if not 1 <= self.sub_centers <= MAX_SUB_CENTERS:
            raise ConfigError(f"--sub-centers must be between 1 and {MAX_SUB_CENTERS}, got "
                              f"{self.sub_centers}")

    def _check_numbers(self) -> None:
        _require_positive("epochs", self.epochs)
        _require_positive("batch size", self.batch_size)
        _require_positive("learning rate", self.learning_rate)
        if self.margin is not None:
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

    def _check_folders(self) -> None:
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
        return self.model_variant.online

    @property
    def model_variant(self):
        """The :class:`~keras_siamese.variants.Variant` these settings train."""
        return variant_of(self.loss, self.mining)

    def unused_options(self, given) -> list[str]:
        """Of the options the user typed (``given``, field names), those these settings
        would ignore, each with why: a run must not look as if it used them."""
        unused = []
        if self.online and "batch_size" in given:
            unused.append(f"--batch-size does not apply to --loss {self.variant} (it trains on "
                          "P x K batches: --classes-per-batch, --images-per-class)")
        if not self.online:
            unused += [f"--{name.replace('_', '-')} does not apply to --loss {self.variant} "
                       "(only online mining draws P x K batches)"
                       for name in ("classes_per_batch", "images_per_class") if name in given]
        if not self.memory and "memory_warmup" in given:
            unused.append("--memory-warmup does not apply without --memory")
        return unused

    @property
    def training_batch_size(self) -> int:
        """Examples per training step: ``--batch-size``, or P x K with online mining."""
        return self.classes_per_batch * self.images_per_class if self.online else \
            self.batch_size

    @property
    def variant(self) -> str:
        """``<loss>`` or ``<loss>-<mining>``, e.g. ``triplet-batch-hard``."""
        return self.model_variant.name

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
                from error
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
        settings.setdefault("normalize", False)  # runs made before --normalize: not normalised
        if not isinstance(fingerprint, (dict, type(None))):
            raise DataError(f"{source}: {DATA_FINGERPRINT} is not a JSON object")
        try:
            return cls(**settings), fingerprint
        except ConfigError as error:
            raise DataError(f"{source}: {error}") from error


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
