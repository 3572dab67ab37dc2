"""AlexNet (CIFAR variant) 1w1a on CIFAR-10, VGG-Small's recipe (the original gives none of its own)."""

from configs import vgg_small_cifar10


def get_config():
    config = vgg_small_cifar10.get_config()
    config.model = "alexnet"
    return config
