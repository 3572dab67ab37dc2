"""IR-Net ResNet-20 1w1a on CIFAR-10 (official recipe: 400 epochs, SGD lr 0.1 cosine, EDE 1e-3 -> 10)."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet20"
    config.model_kwargs.block = "bireal"  # "basic": the standard two-conv block
    config.dataset = "cifar10"
    config.num_epochs = 400
    config.learning_rate = 0.1
    config.t_min, config.t_max = 1e-3, 10.0
    return config
