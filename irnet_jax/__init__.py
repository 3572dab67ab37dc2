"""irnet_jax: binary neural networks (1-bit weights and activations) with IR-Net, in JAX/Flax.

    from irnet_jax import train_and_evaluate, create_model, load_model
    summary = train_and_evaluate(config, workdir)     # train.py's job, from a notebook
    model, config, step = load_model(workdir)         # a trained model, eval mode

The export is ``irnet_jax.export`` (``python -m irnet_jax.export``); the benchmark ``irnet_jax.bench``.
"""

from irnet_jax.binarization import EstimatorParams, ede_sign, ie_sign, sign, ste_sign
from irnet_jax.errors import ConfigError, Diverged, UserError
from irnet_jax.layers import BinaryConv, BinaryDense
from irnet_jax.models import create_model, list_models, register_model
from irnet_jax.optim import create_optimizer, learning_rate_schedule
from irnet_jax.runtime import configure_cpu_devices, configure_runtime
from irnet_jax.steps import make_eval_step, make_multi_step, make_train_step
from irnet_jax.summary import summarize
from irnet_jax.train_state import TrainState, build_model, create_train_state, load_model
from irnet_jax.trainer import evaluate_checkpoint, train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "BinaryConv",
    "BinaryDense",
    "ConfigError",
    "Diverged",
    "EstimatorParams",
    "TrainState",
    "UserError",
    "build_model",
    "configure_cpu_devices",
    "configure_runtime",
    "create_model",
    "create_optimizer",
    "create_train_state",
    "ede_sign",
    "evaluate_checkpoint",
    "ie_sign",
    "learning_rate_schedule",
    "list_models",
    "load_model",
    "make_eval_step",
    "make_multi_step",
    "make_train_step",
    "register_model",
    "sign",
    "ste_sign",
    "summarize",
    "train_and_evaluate",
]
