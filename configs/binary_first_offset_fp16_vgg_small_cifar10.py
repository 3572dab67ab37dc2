"""Result-table row "first layer binary, BN -> offset, fp16, VGG-Small 1/1" (original: 64.8%).

fp16 is bfloat16 here (``half_precision``); input binarized as in binary_first_offset_resnet20_cifar10."""

from configs import vgg_small_cifar10


def get_config():
    config = vgg_small_cifar10.get_config()
    config.binary_first_layer = True
    config.integer_first_layer = False
    config.input_encoding, config.encoding_levels = "thermometer", 1
    config.norm = "offset"
    config.half_precision = True
    return config
