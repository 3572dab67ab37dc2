"""Result-table row "IE-Net, ResNet-20 1/1" (cited: 88.5%).

IE-Net = the Information Enhancement Estimator ("ie": weights t = 10**(-2 + 3p), k = max(1/t, 1);
activations k = 1, t = max(t, 1)), a learned per-channel weight scale initialised to mean|w|,
activations divided by their per-sample std, and IE-BC shift convs with a small learnable second
branch. ResNet-20 in the Bi-Real form, as the core model."""

from configs import resnet20_cifar10


def apply_ienet(config):
    config.estimator = "ie"
    config.t_min, config.t_max = 0.01, 10.0
    config.ede_per_epoch = False
    config.weight_scale = "learned"
    config.activation_std_norm = True
    config.shift_conv = True
    config.shift_learn_second_scale = True
    config.shift_second_scale = 0.1
    return config


def get_config():
    return apply_ienet(resnet20_cifar10.get_config())
