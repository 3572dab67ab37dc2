"""Result-table row "IE-Net, ResNet-18 1/1" (cited: 92.9%); IE-Net as in ienet_resnet20_cifar10."""

from configs import resnet18_cifar10
from configs.common import apply_ienet


def get_config():
    return apply_ienet(resnet18_cifar10.get_config())
