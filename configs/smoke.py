"""A real training run on real MNIST that finishes in a few CPU minutes: the 1w1a MNIST net
(binary middle conv layers, float first/last), 2 epochs, with warm-up, EDE and checkpoints."""

from configs import mnistnet_mnist


def get_config():
    config = mnistnet_mnist.get_config()
    config.num_epochs = 2
    config.batch_size = 128
    config.warmup_epochs = 0.2
    config.learning_rate = 2e-3
    config.log_every_steps = 50
    config.eval_batch_size = 1000
    return config
