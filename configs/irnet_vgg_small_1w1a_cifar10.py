"""Result-table row "IR-Net, first layer full precision, VGG-Small 1/1" (paper: 90.4%)."""

from configs import vgg_small_cifar10


def get_config():
    return vgg_small_cifar10.get_config()
