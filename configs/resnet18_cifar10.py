"""IR-Net CIFAR ResNet-18 1w1a on CIFAR-10 (ResNet-20's recipe)."""

from configs import resnet20_cifar10


def get_config():
    config = resnet20_cifar10.get_config()
    config.model = "resnet18"
    return config
