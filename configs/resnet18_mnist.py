"""The resnet18 CIFAR-10 config on MNIST, with the original README's MNIST budget (10 epochs)."""

from configs import resnet18_cifar10


def get_config():
    config = resnet18_cifar10.get_config()
    config.dataset = "mnist"
    config.num_epochs = 10
    return config
