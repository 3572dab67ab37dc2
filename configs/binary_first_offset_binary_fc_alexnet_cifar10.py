"""Result-table row "first layer binary, BN -> offset, binary FC, AlexNet 1/1" (never obtained by the
original). The binary last layer has a learned output scale so its integer logits stay usable."""

from configs import alexnet_cifar10


def get_config():
    config = alexnet_cifar10.get_config()
    config.binary_first_layer = True
    config.integer_first_layer = False
    config.binary_last_layer = True
    config.input_encoding, config.encoding_levels = "thermometer", 1
    config.norm = "offset"
    return config
