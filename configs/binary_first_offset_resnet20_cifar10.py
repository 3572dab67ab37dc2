"""Result-table row "first layer binary, BN -> offset, ResNet-20 1/1" (original: 68.4%).

The original binarized the input image itself; here that is a 1-level thermometer code (pixel >= 128,
one +-1 plane per colour channel). Every norm is a learnable offset (a threshold on hardware)."""

from configs import resnet20_cifar10


def get_config():
    config = resnet20_cifar10.get_config()
    config.binary_first_layer = True
    config.input_encoding, config.encoding_levels = "thermometer", 1
    config.norm = "offset"
    return config
