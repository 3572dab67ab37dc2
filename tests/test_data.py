"""Training augmentations: what each one does to a batch, and how "default" resolves per dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib

CIFAR, MNIST = data_lib.get_dataset_info("cifar10"), data_lib.get_dataset_info("mnist")


def batch(b=64, h=12, w=10, c=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 256, (b, h, w, c), np.uint8))


def windows(images, padding):
    """Every crop position of every image of the zero-padded batch: [B, P, P, H, W, C]."""
    x = np.pad(np.asarray(images), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = images.shape[1:3]
    p = 2 * padding + 1
    return np.stack([np.stack([x[:, i : i + h, j : j + w] for j in range(p)], 1) for i in range(p)], 1)


def test_default_resolves_to_the_datasets_own():
    assert data_lib.resolve_augment("default", CIFAR) == "crop_flip"
    assert data_lib.resolve_augment("default", MNIST) == "none"
    assert data_lib.resolve_augment("crop", MNIST) == "crop"
    with pytest.raises(
        ValueError, match=r"unknown augment 'rotate'; valid: \['default', 'none', 'crop', 'crop_flip'\]"
    ):
        data_lib.resolve_augment("rotate", CIFAR)


def test_crop_is_a_shift_within_the_padding_and_uses_every_offset():
    x = batch(b=512)
    out = np.asarray(data_lib.augment_images(x, jax.random.key(1), "crop", crop_padding=2))
    win = windows(x, 2)  # [B, 5, 5, H, W, C]
    match = np.all(win == out[:, None, None], axis=(3, 4, 5))  # [B, 5, 5]: which offset each image got
    assert np.all(match.sum((1, 2)) == 1)  # exactly one window (pixels are >= 1, so borders are unique)
    used = match.any(0)
    assert used.all()  # all 25 offsets occur in 512 images
    assert not np.array_equal(out, np.asarray(x))


def test_crop_flip_mirrors_about_half_and_none_is_identity():
    x = batch(b=400)
    key = jax.random.key(3)
    none = data_lib.augment_images(x, key, "none")
    assert np.array_equal(np.asarray(none), np.asarray(x))
    unshifted = data_lib.augment_images(x, key, "crop_flip", crop_padding=0)  # flip only
    same = np.all(np.asarray(unshifted) == np.asarray(x), axis=(1, 2, 3))
    mirrored = np.all(np.asarray(unshifted) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert 150 < mirrored.sum() < 250


def test_preprocess_augments_only_with_a_key():
    x = batch(b=8, h=28, w=28, c=1)
    key = jax.random.key(0)
    plain = data_lib.preprocess(x, MNIST, None, augment="crop")
    assert np.array_equal(np.asarray(plain), np.asarray(data_lib.normalize(x, MNIST)))
    assert not np.array_equal(np.asarray(data_lib.preprocess(x, MNIST, key, augment="crop")), np.asarray(plain))
    assert np.array_equal(np.asarray(data_lib.preprocess(x, MNIST, key)), np.asarray(plain))  # MNIST default: none


def test_checkpoints_from_before_the_augment_fields_still_match_their_defaults():
    from configs import smoke

    config = smoke.get_config()
    saved = {
        k: v for k, v in ckpt.training_fields(config).items() if k not in ("augment", "crop_padding", "normalization")
    }
    ckpt.check_compatible(saved, config, "old")  # absent == the value they were trained with
    config.augment = "crop"
    with pytest.raises(ckpt.CheckpointError, match=r"augment: checkpoint 'default' vs config 'crop'"):
        ckpt.check_compatible(saved, config, "old")


def test_normalization_dataset_or_imagenet_statistics():
    x = batch(8, 4, 4, 3)
    pixels = np.asarray(x, np.float64) / 255
    for name, mean, std in [
        ("dataset", CIFAR.mean, CIFAR.std),
        ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]:
        expected = (pixels - np.asarray(mean)) / np.asarray(std)
        got = np.asarray(data_lib.preprocess(x, CIFAR, None, normalization=name))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"normalization='imagenet' needs RGB images; mnist has 1 channel"):
        data_lib.normalize(batch(2, 4, 4, 1), MNIST, normalization="imagenet")
    with pytest.raises(ValueError, match=r"unknown normalization 'zca'; valid: \['dataset', 'imagenet'\]"):
        data_lib.normalize(x, CIFAR, normalization="zca")


def test_a_run_config_from_before_a_field_existed_reads_with_its_old_value(tmp_path):
    import json

    from configs import smoke
    from irnet_jax.train_state import read_run_config

    fields = json.loads(smoke.get_config().to_json())
    del fields["normalization"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert read_run_config(str(tmp_path)).normalization == "dataset"
