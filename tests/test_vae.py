"""The VAE friend: its ELBO against NumPy, the shared encoder, and a real short run."""

import json

import numpy as np
import pytest

from helpers import run_cli
from keras_siamese import models
from keras_siamese.losses import (BernoulliReconstructionLoss, GaussianKLLoss,
                                  bernoulli_reconstruction_loss, gaussian_kl_loss)


def numpy_negative_elbo(images, logits, mean, log_var):
    """-ELBO per image, from the definitions: -log p(x|z) + KL(q(z|x) || N(0, I))."""
    x = images.astype(np.float64) / 255.0
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    log_likelihood = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(1)
    kl = 0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var).sum(1)
    return -log_likelihood + kl


def test_elbo_terms_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 6, 6, 1)).astype(np.float32)
    images[0] = 0  # an all-black image and an all-white one: the extremes of the likelihood
    images[1] = 255
    logits = rng.normal(scale=3.0, size=images.shape).astype(np.float32)
    mean = rng.normal(size=(4, 2)).astype(np.float32)
    log_var = rng.normal(size=(4, 2)).astype(np.float32)
    posterior = np.concatenate([mean, log_var], axis=1)
    got = (np.asarray(bernoulli_reconstruction_loss(images, logits))
           + np.asarray(gaussian_kl_loss(None, posterior)))
    np.testing.assert_allclose(got, numpy_negative_elbo(images, logits, mean, log_var),
                               rtol=1e-5)
    # The prior itself costs nothing; the Loss classes average the per-image values.
    zero = np.zeros((1, 4), np.float32)
    assert float(gaussian_kl_loss(None, zero)[0]) == 0.0
    total = (float(BernoulliReconstructionLoss()(images, logits))
             + float(GaussianKLLoss()(np.zeros((4, 1)), posterior)))
    assert total == pytest.approx(numpy_negative_elbo(images, logits, mean, log_var).mean(),
                                  rel=1e-5)


def test_vae_embedding_is_the_encoder_mean_and_survives_a_round_trip(tmp_path):
    import keras

    encoder = models.vae_encoder((28, 28, 1), 2)
    model = models.vae_model(encoder, models.vae_decoder(2, (28, 28, 1)))
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1)).astype(np.float32)
    embedding = models.embedding_of(model)
    np.testing.assert_allclose(embedding(x).numpy(), encoder(x)[0].numpy(), rtol=1e-6)
    out = model(x, training=False)
    assert out["reconstruction"].shape == (3, 28, 28, 1) and out["posterior"].shape == (3, 4)
    model.save(tmp_path / "vae.keras")
    again = keras.models.load_model(tmp_path / "vae.keras", compile=False)
    np.testing.assert_allclose(models.embedding_of(again)(x).numpy(), embedding(x).numpy(),
                               rtol=1e-6)


def test_vae_trains_and_writes_its_figures(tmp_path):
    result = run_cli("train", "--loss", "vae", "--epochs", "1", "--limit", "1000",
                     "--no-projector", "--output-dir", tmp_path / "out", "--log-dir",
                     tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "out" / "vae_mnist"
    for name in ["manifold.png", "reconstructions.png", "embedding.png", "latent.gif",
                 "saved_model/saved_model.pb"]:
        assert (run / name).is_file(), name
    history = (run / "history.csv").read_text().splitlines()[0]
    assert "reconstruction_loss" in history and "posterior_loss" in history
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision_at_1"] > 0.15  # unsupervised, one short epoch: above chance
