"""Result-table row "IR-Net, first layer full precision, ResNet-20 1/32" (paper: 90.8%) with the official
recipe (htqin/IR-Net ``CIFAR-10/ResNet20/1w32a/trainer.py``): ``configs.common.official_recipe`` on
``configs/resnet20_1w32a_cifar10.py`` (this project's own recipe), and that trainer's EDE range 0.1 -> 10."""

from configs import resnet20_1w32a_cifar10
from configs.common import official_recipe


def get_config():
    config = official_recipe(resnet20_1w32a_cifar10.get_config())
    config.t_min, config.t_max = 0.1, 10.0
    return config
