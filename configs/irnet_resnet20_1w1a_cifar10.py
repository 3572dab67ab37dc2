"""Result-table row "IR-Net, first layer full precision, ResNet-20 1/1" (paper: 86.5%)."""

from configs import resnet20_cifar10


def get_config():
    return resnet20_cifar10.get_config()
