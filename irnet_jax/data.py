"""Datasets: TFDS splits read into memory once, a held-out validation split, on-device augmentation.

CIFAR-10 and MNIST fit in accelerator memory: the uint8 images live there (replicated on every
device) and each step gathers its batch by index, augments and normalizes it inside the jitted step,
so the accelerator never waits for the host. Reading needs no TensorFlow (array_record + Pillow).

Splits: ``train`` = TFDS train minus the last ``validation_size`` examples of a seeded shuffle,
``validation`` = those held out (model selection), ``test`` = TFDS test (final numbers only).
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from irnet_jax.encoding import encode
from irnet_jax.errors import UserError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    tfds_name: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    augment: str  # the training augmentation of config.augment="default" (see AUGMENTATIONS)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment="crop_flip"
    ),
    "mnist": DatasetInfo("mnist", "mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), augment="none"),
}


# ``config.normalization``: "dataset" = the dataset's own mean/std (DatasetInfo), "imagenet" = ImageNet's
# RGB statistics, as the official IR-Net code uses for CIFAR-10 (3-channel datasets only).
NORMALIZATIONS = ("dataset", "imagenet")
PIXELS = "pixels"  # no normalization: the pixel values as floats (a model that normalizes itself)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalization_stats(info: DatasetInfo, normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` in [0, 1] pixel units of ``normalization`` for dataset ``info``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {list(NORMALIZATIONS)}")
    if normalization == "dataset":
        return info.mean, info.std
    if info.image_shape[-1] != len(IMAGENET_MEAN):
        raise ValueError(
            f"normalization='imagenet' needs RGB images; {info.name} has {info.image_shape[-1]} channel(s)"
        )
    return IMAGENET_MEAN, IMAGENET_STD


def get_dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}") from None


class Split(NamedTuple):
    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N] int32


class DataError(UserError, RuntimeError):
    """The dataset cannot be found or read."""


def resolve_data_dir(data_dir: str) -> str | None:
    """``data_dir`` if set, else ``$TFDS_DATA_DIR``, else ``None`` (TFDS's own default, ~/tensorflow_datasets)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _prepare_hint(name: str, where: str) -> str:
    return (
        f"dataset {name!r} is not prepared in {where}; prepare it once with TensorFlow installed: "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{where}', "
        f"file_format='array_record').download_and_prepare()\"`, or set config.data_dir / TFDS_DATA_DIR "
        f"to a directory that holds {name}/"
    )


def load_tfds_split(name: str, split: str, data_dir: str = "", download: bool = False) -> Split:
    """Read a whole TFDS split into memory as uint8 images and int32 labels.

    ``download=True`` lets TFDS download and prepare the dataset first (that step needs TensorFlow
    and internet access); otherwise an unprepared dataset is a ``DataError`` naming the directory.
    """
    import tensorflow_datasets as tfds  # slow import; only needed here

    info = get_dataset_info(name)
    where = resolve_data_dir(data_dir)
    shown = where or os.path.expanduser("~/tensorflow_datasets")
    if where is not None and not os.path.isdir(where) and not download:
        raise DataError(f"data dir {where!r} does not exist; " + _prepare_hint(info.tfds_name, where))
    try:
        sources = tfds.data_source(
            info.tfds_name, data_dir=where, download=download, builder_kwargs={"file_format": "array_record"}
        )
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; all mean "not readable here"
        raise DataError(f"{_prepare_hint(info.tfds_name, shown)} ({type(e).__name__}: {e})") from e
    if split not in sources or len(sources[split]) == 0:  # data_source is silently empty when unprepared
        raise DataError(_prepare_hint(info.tfds_name, shown) + f" (found splits: {sorted(sources)})")
    source = sources[split]
    records = source.__getitems__(range(len(source)))
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    labels = np.asarray([r["label"] for r in records], np.int32)
    if images.shape[1:] != info.image_shape:
        raise DataError(f"{name}/{split}: images of shape {images.shape[1:]}, expected {info.image_shape}")
    return Split(images, labels)


def train_validation_split(train: Split, validation_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``validation_size`` examples of ``train`` (a permutation seeded by ``seed``)."""
    n = len(train.labels)
    if not 0 <= validation_size < n:
        raise ValueError(f"validation_size={validation_size} must be in [0, {n})")
    order = np.random.default_rng(seed).permutation(n)
    keep, held = np.sort(order[: n - validation_size]), np.sort(order[n - validation_size :])
    return Split(train.images[keep], train.labels[keep]), Split(train.images[held], train.labels[held])


def load_dataset(
    name: str, data_dir: str = "", validation_size: int = 5000, seed: int = 0, download: bool = False
) -> dict[str, Split]:
    """``{"train", "validation", "test"}`` splits of dataset ``name`` in host memory."""
    train = load_tfds_split(name, "train", data_dir, download)
    train, val = train_validation_split(train, validation_size, seed)
    return {"train": train, "validation": val, "test": load_tfds_split(name, "test", data_dir, download)}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a pure function of (seed, epoch), so a resumed run sees the same data."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def normalize(images_u8: Array, info: DatasetInfo, dtype=jnp.float32, normalization: str = "dataset") -> Array:
    """``(x / 255 - mean) / std`` per channel (``normalization_stats``), or ``x`` itself (``PIXELS``).
    ``[B, H, W, C] uint8 -> [B, H, W, C] dtype``."""
    if normalization == PIXELS:
        return images_u8.astype(dtype)  # 0..255: exact in bfloat16 too
    mean, std = normalization_stats(info, normalization)
    x = images_u8.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


# Training augmentations (``config.augment``): "crop" = random H x W crop of the image zero-padded by
# ``crop_padding`` pixels per side (a shift by up to that many pixels), "crop_flip" = crop + random
# horizontal flip (IR-Net's CIFAR-10 recipe), "none"; "default" = the dataset's own (DatasetInfo.augment:
# crop_flip for CIFAR-10, none for MNIST, whose digits must not be mirrored).
AUGMENTATIONS = ("default", "none", "crop", "crop_flip")


def resolve_augment(augment: str, info: DatasetInfo) -> str:
    """The augmentation ``augment`` names for dataset ``info`` ("default" -> the dataset's own)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTATIONS)}")
    return info.augment if augment == "default" else augment


def random_crop(images: Array, key: Array, padding: int = 4) -> Array:
    """Per-image random ``H x W`` crop of the zero-padded image: ``[B, H, W, C] -> [B, H, W, C]``
    (any dtype; pad value 0, i.e. a black border before normalization)."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def random_flip(images: Array, key: Array) -> Array:
    """Mirror each image of ``[B, H, W, C]`` left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment_images(images: Array, key: Array, augment: str, crop_padding: int = 4) -> Array:
    """Apply a resolved augmentation ("none", "crop" or "crop_flip") to ``[B, H, W, C]``."""
    k_crop, k_flip = jax.random.split(key)
    if augment in ("crop", "crop_flip") and crop_padding > 0:
        images = random_crop(images, k_crop, crop_padding)
    if augment == "crop_flip":
        images = random_flip(images, k_flip)
    return images


def preprocess(
    images_u8: Array,
    info: DatasetInfo,
    key: Array | None,
    dtype=jnp.float32,
    encoding: str = "none",
    levels: int = 1,
    augment: str = "default",
    crop_padding: int = 4,
    normalization: str = "dataset",
) -> Array:
    """Augment (training: when ``key`` is given, as ``augment`` says), then normalize (``normalization``),
    or encode into {-1, +1} planes (``encoding``, see ``irnet_jax.encoding``) for a binary first layer."""
    if key is not None:
        images_u8 = augment_images(images_u8, key, resolve_augment(augment, info), crop_padding)
    if encoding != "none":
        return encode(images_u8, encoding, levels, dtype)
    return normalize(images_u8, info, dtype, normalization)
