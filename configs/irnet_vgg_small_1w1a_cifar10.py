"""Result-table row "IR-Net, first layer full precision, VGG-Small 1/1" (paper: 90.4%) with the official recipe
(htqin/IR-Net ``CIFAR-10/VGG-Small/main.py``): ``configs.common.official_recipe`` on ``configs/vgg_small_cifar10.py``
(this project's own recipe for the same network)."""

from configs import vgg_small_cifar10
from configs.common import official_recipe


def get_config():
    return official_recipe(vgg_small_cifar10.get_config())
