"""Result-table row "IR-Net, first layer full precision, ResNet-20 1/32" (paper: 90.8%)."""

from configs import resnet20_1w32a_cifar10


def get_config():
    return resnet20_1w32a_cifar10.get_config()
