"""Default hyper-parameters; every experiment config derives from ``get_config()``.

Every field is overridable from the command line (``--config.<field>=<value>``). Fields that mean
"unset" use a typed sentinel (``""``, ``-1``), never ``None``, which ml_collections cannot override.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Model (irnet_jax.models registry) and its binarization.
    config.model = "vgg_small"
    config.binary = True  # False: the same network in full precision
    config.binarize_activations = True  # False: 1w32a
    config.binary_first_layer = False  # the paper keeps first and last layers full precision
    config.binary_last_layer = False
    config.estimator = "ede"  # "ede" (IR-Net), "ste" (BinaryNet's clipped identity), "ie" (IE-Net)
    config.weight_scale = "power_of_two"  # Libra-PB's 2**round(log2(mean|w|)); "learned" (IE-Net); "none"
    config.activation_std_norm = False  # IE-Net: divide activations by their per-sample std before sign
    # Hardware-oriented variants (see README, "Fully binary networks").
    config.pad_value = "zero"  # binary convs pad with "zero", "one", "minus_one" or "checkerboard"
    config.norm = "batchnorm"  # "batchnorm", "offset" (x + b) or "frozen_scale_batchnorm"
    config.shift_conv = False  # 2-base binary activation: conv(sign(x+s1)) + a * conv(sign(x+s2))
    config.shift_learn_second_scale = False  # a learnable (IE-Net) instead of fixed
    config.shift_second_scale = 1.0  # a (or its initial value)
    config.last_layer_output_scale = "learned"  # binary last layer: "learned", "fixed" 1/sqrt(K), "none"
    # Bi-Real ResNets: > 0 = an int32 fixed-point residual stream with this many fractional bits, computed
    # in integers in eval mode (bit-exact export) and rounded to that grid in training; 0 = float.
    config.residual_frac_bits = 0
    # Sequential nets (VGG-Small, AlexNet, MNIST net): True = the float first layer computed in exact int32
    # arithmetic in eval mode (pixels in, normalized by the model), so the export is the model's own.
    config.integer_first_layer = False
    config.input_encoding = "none"  # "thermometer" or "bitplanes": uint8 image -> +-1 planes
    config.encoding_levels = 8  # thermometer levels / bit-planes per colour channel
    config.model_kwargs = ml_collections.ConfigDict()  # the model's own keywords, e.g. block="basic"

    # Error Decay Estimator schedule: t = t_min * 10**(p * log10(t_max / t_min)), k = max(1/t, 1).
    config.t_min = 0.1
    config.t_max = 10.0
    config.ede_per_epoch = True  # p = epoch / num_epochs (official IR-Net); False: p = step / total

    # Data (TFDS). data_dir "" = $TFDS_DATA_DIR, else TFDS's default directory.
    config.dataset = "cifar10"
    config.data_dir = ""
    config.download = False  # let TFDS download and prepare (needs TensorFlow and internet)
    config.validation_size = 5000  # held out of the train split for model selection
    config.train_size = -1  # > 0: train on only this many examples (quick experiments); -1: all
    # Training augmentation: "default" (the dataset's: crop_flip for CIFAR-10, none for MNIST),
    # "none", "crop" (random shift by up to crop_padding pixels) or "crop_flip" (+ horizontal flip).
    config.augment = "default"
    config.crop_padding = 4
    # Pixel normalization (x / 255 - mean) / std: "dataset" (its own statistics) or "imagenet" (ImageNet's
    # RGB statistics, as the official IR-Net code uses for CIFAR-10).
    config.normalization = "dataset"

    # Optimization.
    config.optimizer = "sgd"  # "sgd" (momentum, IR-Net), "adam" or "adamw"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 1e-4  # on all parameters, as IR-Net
    config.warmup_epochs = 0.0  # linear warm-up from 0, then cosine decay to 0
    config.lr_per_epoch = False  # True: the schedule steps once per epoch (official IR-Net)
    config.label_smoothing = 0.0
    config.batch_size = 128  # global batch, split over all devices
    config.eval_batch_size = 500
    config.num_epochs = 200
    config.num_train_steps = -1  # > 0: stop after this many steps (a short run); -1: all epochs
    config.half_precision = False  # bfloat16 compute, float32 weights/optimizer/BatchNorm statistics
    config.seed = 0
    # Backend policy (irnet_jax.runtime; operational: never changes what a run computes; why each
    # default is what it is: BENCHMARKS.md). fusion_barriers: "auto" = on CPU, store the ResNets'
    # residual stream once per block (XLA:CPU otherwise recomputes earlier blocks in every fusion).
    config.fusion_barriers = "auto"
    # How a 1w1a conv computes its forward sums (irnet_jax.sign_conv; the same numbers as float32):
    # "popcount" (XNOR-popcount of sign bits packed 32 to a word), "int8" (int8 products, int32 sums),
    # "float"; "auto" = "popcount" on CPU (several times faster than XLA:CPU's convolutions there), "float"
    # elsewhere. The backward pass is the float convolution's in every case.
    config.binary_conv_products = "auto"
    # XLA:CPU's YNNPACK library fusions in the train step: "reduce" = for reductions only (XLA's own
    # convolution kernels, faster for training on the Intel and AMD VMs measured), "default" = XLA's
    # choice, "auto" = "reduce" on CPU unless $XLA_FLAGS sets --xla_cpu_experimental_ynn_fusion_type.
    # A compile option of the train step alone: evaluation keeps XLA's default.
    config.train_ynn_fusions = "auto"
    # CPU only: split the CPU into this many JAX devices (data parallel, one batch shard each) so that
    # XLA's single-threaded kernels of different shards run on different cores; 0 = JAX's default
    # (1 device). Applied before JAX starts (train.py and the benchmark do it).
    config.cpu_devices = 2
    # Train steps per device call (one jitted lax.scan over S batches; the same computation as S single
    # steps; a call never crosses an epoch's end). -1 = auto: 4 on CPU, 8 on GPU, 1 on TPU.
    # unroll_steps: "auto" unrolls that loop on CPU only; "on" / "off" force it.
    config.steps_per_call = -1
    config.unroll_steps = "auto"
    # Extra XLA flags, added to $XLA_FLAGS before JAX starts (a flag $XLA_FLAGS already sets keeps the
    # environment's value). "auto" = runtime.AUTO_XLA_FLAGS (GPU: convolutions inside the step's CUDA
    # graphs; CPU: XLA's depth-first kernel order; each ignored by the other backend). "" adds none.
    config.xla_flags = "auto"

    # Logging and checkpoints (operational fields: may differ on resume).
    config.log_every_steps = 100
    config.save_every_epochs = 1
    config.keep_checkpoints = 3  # the latest N; the best by validation accuracy is kept too
    config.resume_dir = ""  # a previous workdir to resume from ("": a fresh run; "auto": the workdir if it has one)
    config.eval_only = False  # evaluate the checkpoint in resume_dir (or workdir) and exit
    config.eval_checkpoint = "best"  # "best" (validation accuracy) or "latest"
    return config
