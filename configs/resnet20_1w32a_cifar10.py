"""IR-Net ResNet-20 1w32a (binary weights, float activations) on CIFAR-10."""

from configs import resnet20_cifar10


def get_config():
    config = resnet20_cifar10.get_config()
    config.binarize_activations = False
    return config
