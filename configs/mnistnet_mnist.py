"""The original's small MNIST net (convs 32/64/128), 1w1a with float first/last layers, 10 epochs."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "mnistnet"
    config.dataset = "mnist"
    config.num_epochs = 10
    config.batch_size = 100  # the original README's MNIST batch
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.weight_decay = 0.0
    config.t_min, config.t_max = 0.1, 10.0
    config.integer_first_layer = True  # eval: the float first layer in exact int32 (the export's); training unchanged
    return config
