"""The vgg_small CIFAR-10 config on MNIST, with the original README's MNIST budget (10 epochs)."""

from configs import vgg_small_cifar10


def get_config():
    config = vgg_small_cifar10.get_config()
    config.dataset = "mnist"
    config.num_epochs = 10
    return config
