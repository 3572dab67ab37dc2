"""Fully binary VGG-Small (as fully_binary_vgg_small_cifar10) with shift convs: every binary conv
sees sign(x + s1) and sign(x + s2), a 2-base binary activation (the original's ShiftIRConv2d)."""

from configs import fully_binary_vgg_small_cifar10


def get_config():
    config = fully_binary_vgg_small_cifar10.get_config()
    config.shift_conv = True
    return config
