"""IR-Net VGG-Small 1w1a on CIFAR-10 (official recipe: 300 epochs, SGD lr 0.007 cosine, EDE 0.1 -> 10)."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "vgg_small"
    config.dataset = "cifar10"
    config.num_epochs = 300
    config.learning_rate = 0.007
    config.t_min, config.t_max = 0.1, 10.0
    config.integer_first_layer = True  # eval: the float first layer in exact int32 (the export's); training unchanged
    return config
