"""Fully binary VGG-Small: every conv and the classifier binary (weights and inputs), the image
encoded as 8-level thermometer planes (3 -> 24 channels of +-1), +1/-1 checkerboard padding, so every
tensor a binary layer sees is in {-1, +1}; BatchNorm becomes a per-channel threshold at inference."""

from configs import vgg_small_cifar10
from configs.common import make_fully_binary


def get_config():
    return make_fully_binary(vgg_small_cifar10.get_config())
