"""Helpers that configs share: each turns a base config into a variant, in place, and returns it."""

import ml_collections


def make_fully_binary(config: ml_collections.ConfigDict, levels: int = 8) -> ml_collections.ConfigDict:
    """Every layer binary, first and last included: the image as ``levels``-level thermometer planes
    (C -> C * levels channels of ±1) and ±1 checkerboard padding, so every tensor a binary layer sees
    is in {-1, +1}; BatchNorm becomes a per-channel threshold at inference."""
    config.binary_first_layer = True
    config.binary_last_layer = True
    config.integer_first_layer = False  # (a binary first layer is integer already)
    config.input_encoding, config.encoding_levels = "thermometer", levels
    config.pad_value = "checkerboard"
    return config


def official_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The official IR-Net CIFAR-10 training mechanics (htqin/IR-Net ``CIFAR-10/ResNet20/1w1a/trainer.py``,
    ``CIFAR-10/VGG-Small/main.py``) where they differ from this project's recipe: all 50,000 training
    images (no hold-out: the best checkpoint is the last), the cosine learning rate stepped once per
    epoch, ImageNet's mean/std. README ("The official recipe") lists every difference."""
    config.validation_size = 0
    config.lr_per_epoch = True
    config.ede_per_epoch = True
    config.normalization = "imagenet"
    return config


def apply_ienet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """IE-Net: the Information Enhancement Estimator ("ie": weights t = 10**(-2 + 3p), k = max(1/t, 1);
    activations k = 1, t = max(t, 1)), a learned per-channel weight scale initialised to mean|w|,
    activations divided by their per-sample std, and IE-BC shift convs with a small learnable second
    branch."""
    config.estimator = "ie"
    config.t_min, config.t_max = 0.01, 10.0
    config.ede_per_epoch = False
    config.weight_scale = "learned"
    config.activation_std_norm = True
    config.shift_conv = True
    config.shift_learn_second_scale = True
    config.shift_second_scale = 0.1
    config.integer_first_layer = False  # a shift conv takes two thresholds of the first layer's values, not its sign
    return config
