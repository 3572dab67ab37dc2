"""Result-table row "IR-Net, first layer full precision, ResNet-20 1/1" (paper: 86.5%) with the official recipe
(htqin/IR-Net ``CIFAR-10/ResNet20/1w1a/trainer.py``): ``configs.common.official_recipe`` on ``configs/resnet20_cifar10.py``
(this project's own recipe for the same network)."""

from configs import resnet20_cifar10
from configs.common import official_recipe


def get_config():
    return official_recipe(resnet20_cifar10.get_config())
