"""The variant table and the settings: one definition each, and what is derived from them."""

import dataclasses

import click
import numpy as np
import pytest

from keras_siamese import experiment, models, run_folder, streams, variants
from keras_siamese.cli.main import app
from keras_siamese.config import TrainConfig
from keras_siamese.losses import OnlineContrastiveLoss

TRAIN = app.commands["train"]


def _option(name: str) -> click.Option:
    (option,) = [p for p in TRAIN.params if p.name == name]
    return option


def test_every_setting_is_one_train_option_with_its_default_help_and_choices():
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    options = {p.name for p in TRAIN.params} - {"resume_folder", "help"}
    assert options == set(fields)
    for name, field in fields.items():
        option = _option(name)
        assert option.help == field.metadata["help"] and option.help
        if "choices" in field.metadata:
            assert tuple(option.type.choices) == field.metadata["choices"]
    # The command line with no option gives exactly the dataclass's defaults.
    context = TRAIN.make_context("train", [])
    settings = {k: v for k, v in context.params.items() if k != "resume_folder"}
    assert TrainConfig(**settings) == TrainConfig()


def test_options_parse_into_the_settings_they_name(tmp_path):
    args = ["--loss", "triplet", "--mining", "semi-hard", "--lr", "0.01", "--no-frames",
            "--overwrite", "--holdout-classes", "7,9", "--image-size", "32",
            "--output-dir", str(tmp_path)]
    params = TRAIN.make_context("train", args).params
    config = TrainConfig(**{k: v for k, v in params.items() if k != "resume_folder"})
    assert (config.loss, config.mining, config.learning_rate, config.frames, config.overwrite,
            config.holdout_classes, config.image_size) == ("triplet", "semi-hard", 0.01,
                                                           False, True, (7, 9), 32)


def test_loss_and_mining_choices_come_from_the_table():
    assert tuple(_option("loss").type.choices) == variants.losses()
    assert set(_option("mining").type.choices) == {v.mining for v in variants.VARIANTS.values()}
    assert list(app.commands["reproduce"].params[0].default.split(",")) == \
        list(variants.STUDY)
    assert set(variants.STUDY) <= set(variants.losses())
    for name, variant in variants.VARIANTS.items():
        config = TrainConfig(loss=variant.loss, mining=variant.mining)
        assert config.variant == name and config.model_variant is variant


def _in_batch_streams(config, seen, start_epoch):
    """Shuffled images with their labels, not P x K batches."""
    return (streams.image_stream(seen.train_images, seen.train_labels, config.batch_size,
                                 config.seed, start_epoch),
            streams.evaluation_images(seen.test_images, seen.test_labels, config.batch_size))


TOY = variants.Variant(
    "contrastive", "in-batch", "contrastive loss on the pairs of plain shuffled batches",
    build=lambda config, net: (models.online_model(net.embedding_net(config)),
                               OnlineContrastiveLoss(config.margin), []),
    streams=_in_batch_streams)


def test_a_new_variant_is_one_table_entry(tmp_path, monkeypatch):
    """A variant defined here, in this file only, trains and is scored like the built-in
    ones: the settings accept it, the run is named after it, and its folder is whole."""
    monkeypatch.setitem(variants.VARIANTS, TOY.name, TOY)
    config = TrainConfig(loss="contrastive", mining="in-batch", epochs=1, limit=300,
                         batch_size=64, frame_images=50, projector=False, export=False,
                         output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"))
    result = experiment.run(config)
    assert result.run_dir.name == "contrastive-in-batch_mnist"
    assert result.model.name == "online_embedding"
    metrics = run_folder.read_metrics(result.run_dir / run_folder.METRICS)
    assert 0.1 < metrics["precision_at_1"] <= 1  # it learned something from 300 images
    assert run_folder.read_config(result.run_dir)[0].mining == "in-batch"
    embedding = run_folder.load_embedding(result.run_dir)
    assert np.isfinite(models.embed_images(embedding, np.zeros((2, 28, 28, 1)))).all()


def test_unknown_mining_for_a_loss_names_the_table_rows():
    from keras_siamese.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one of random, batch-all, batch-hard, "
                                          "semi-hard"):
        TrainConfig(loss="triplet", mining="hard-negative")


NEW_LOSSES = {  # loss: (default mining, margin, P x K batches)
    "multi-similarity": ("ms-mining", None, True), "circle": ("all-pairs", 0.4, True),
    "supcon": ("all-pairs", None, True), "proxy-anchor": ("random", 0.1, False),
    "arcface": ("random", 0.5, False), "cosface": ("random", 0.35, False)}


def test_the_studys_variants_keep_their_names_and_settings():
    assert list(variants.VARIANTS)[:9] == [
        "softmax", "contrastive", "bce", "triplet", "vae", "contrastive-hard-negative",
        "triplet-batch-all", "triplet-batch-hard", "triplet-semi-hard"]
    for name in list(variants.VARIANTS)[:9]:
        variant = variants.VARIANTS[name]
        config = TrainConfig(loss=variant.loss, mining=variant.mining)
        assert (config.margin, config.normalize, config.sub_centers) == (1.0, False, 1)
    assert TrainConfig(loss="triplet").mining == "random"


@pytest.mark.parametrize("loss", NEW_LOSSES)
def test_each_new_loss_trains_with_no_other_option(loss):
    """``--loss X`` alone: the loss's own mining, margin and unit vectors, its streams."""
    mining, margin, pk = NEW_LOSSES[loss]
    config = TrainConfig(loss=loss)
    assert (config.mining, config.margin, config.normalize) == (mining, margin, True)
    assert config.variant == loss and config.name == f"{loss}_mnist"
    assert config.online is pk
    assert config.training_batch_size == (config.classes_per_batch * config.images_per_class
                                          if pk else config.batch_size)
    assert variants.variant_of(loss) is variants.VARIANTS[loss]
    # The margin can be changed where the loss has one.
    if margin is not None:
        assert TrainConfig(loss=loss, margin=0.2).margin == 0.2


def test_multi_similarity_also_trains_on_all_pairs():
    config = TrainConfig(loss="multi-similarity", mining="all-pairs")
    assert config.variant == "multi-similarity-all-pairs" and config.online


def test_normalize_is_recorded_and_old_runs_without_it_are_not_normalised():
    import json

    config = TrainConfig(loss="contrastive", normalize=True)
    assert TrainConfig.from_json(config.to_json(), "config.json")[0].normalize is True
    old = json.loads(TrainConfig(loss="contrastive").to_json())
    del old["normalize"], old["sub_centers"]  # written before these settings existed
    restored = TrainConfig.from_json(json.dumps(old), "config.json")[0]
    assert restored.normalize is False and restored == TrainConfig(loss="contrastive")


@pytest.mark.parametrize("loss,normalize", [("contrastive", False), ("supcon", True),
                                            ("arcface", True), ("triplet", True)])
def test_the_embedding_net_is_normalised_as_configured(loss, normalize):
    config = TrainConfig(loss=loss, normalize=normalize, embedding_dim=3)
    net = variants.NetSpec((28, 28, 1), 0.0, 1.0, 10)
    model = config.model_variant.build(config, net)[0]
    embedding = models.embedding_of(model)
    assert (embedding.layers[-1].name == "unit_normalize") is normalize
    e = models.embed_images(embedding, np.random.default_rng(0).uniform(0, 255, (5, 28, 28, 1)))
    assert e.shape == (5, 3)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_sub_centres_reach_the_head():
    config = TrainConfig(loss="arcface", sub_centers=3)
    model = config.model_variant.build(config, variants.NetSpec((28, 28, 1), 0.0, 1.0, 10))[0]
    head = model.get_layer("proxies")
    assert (head.sub_centers, head.lr_multiplier) == (3, 1.0)
    assert head.proxies.shape == (10, 3, 2)
    proxy_anchor = TrainConfig(loss="proxy-anchor")
    model = proxy_anchor.model_variant.build(proxy_anchor,
                                             variants.NetSpec((28, 28, 1), 0.0, 1.0, 10))[0]
    assert model.get_layer("proxies").lr_multiplier == variants.PROXY_LR_MULTIPLIER == 100.0
