"""Result-table row "IE-Net, ResNet-20 1/1" (cited: 88.5%): ResNet-20 in the Bi-Real form, as the
core model, with IE-Net's estimator, weight scale, activation norm and shift convs
(``configs.common.apply_ienet``)."""

from configs import resnet20_cifar10
from configs.common import apply_ienet


def get_config():
    return apply_ienet(resnet20_cifar10.get_config())
