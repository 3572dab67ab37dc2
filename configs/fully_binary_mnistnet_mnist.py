"""Fully binary MNIST net: all three convs and the classifier binary, the digit encoded as 2-level
thermometer planes, +1/-1 checkerboard padding: every layer binary, first and last included."""

from configs import mnistnet_mnist
from configs.fully_binary_vgg_small_cifar10 import make_fully_binary


def get_config():
    return make_fully_binary(mnistnet_mnist.get_config(), levels=2)
