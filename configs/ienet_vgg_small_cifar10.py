"""Result-table row "IE-Net, VGG-Small 1/1" (cited: 92.0%); IE-Net as in ienet_resnet20_cifar10."""

from configs import vgg_small_cifar10
from configs.common import apply_ienet


def get_config():
    return apply_ienet(vgg_small_cifar10.get_config())
