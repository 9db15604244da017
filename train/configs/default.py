"""The default recipe; every tunable number lives here (per-model recipes override fields)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "lenet5"
    c.model_kwargs = ml_collections.ConfigDict()  # extra keyword arguments for get_model (e.g. aux_logits)
    c.num_classes = -1  # -1: the dataset's class count
    c.dataset = "embedded_mnist"  # a tfds name, 'folder:/path', or 'embedded_mnist'
    c.data_dir = ""  # tfds data_dir / manual_dir root; '' for tfds' default
    c.train_split = "train"
    c.eval_split = "validation"  # datasets without one hold out a deterministic part of train
    c.image_size = -1  # -1: the model's default input size
    c.augment = ml_collections.ConfigDict(dict(
        random_crop_padding=0,  # CIFAR-style pad-and-crop (pixels)
        random_resized_crop=False,  # Inception-style crop, scale (0.08, 1)
        scale_jitter=(0, 0),  # VGG: shorter side to S in [S_min, S_max] pixels, then a random crop (0: off)
        horizontal_flip=False,
        rotation_degrees=0.0,
        zoom=0.0,
        color_jitter=0.0,
        pca_lighting=0.0,  # AlexNet's PCA noise std (0.1 in the paper)
    ))
    c.normalize = "dataset"  # 'dataset' mean/std, 'imagenet' torchvision mean/std, or 'none' ([0, 1])
    c.crop_fraction = 0.875  # varying-size photos: shorter side to size / 0.875, centre crop (256 -> 224)
    c.shuffle_buffer = 10_000

    c.batch_size = 128  # global
    c.eval_batch_size = 256
    c.num_epochs = 10
    c.num_train_steps = -1  # > 0 overrides num_epochs

    c.optimizer = "sgd"  # sgd | adam | adamw | rmsprop
    c.learning_rate = 0.01
    c.lr_per_256 = 0.0  # > 0: the learning rate is lr_per_256 x batch_size / 256 (Goyal et al.), set at start
    c.momentum = 0.9
    c.nesterov = False
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.rmsprop_decay = 0.9
    c.weight_decay = 0.0  # masked to conv/dense kernels
    c.grad_clip_norm = 0.0  # 0: off
    # {top-level module name: factor}: that module trains at factor x the learning rate (torch's parameter
    # groups), e.g. --config.lr_multipliers.classifier_0=0.5 for any module.
    c.lr_multipliers = ml_collections.ConfigDict()
    c.label_smoothing = 0.0
    c.map_loss_j = 0.0  # > 0: LeNet-5 1998's MAP loss, a constant competitor logit -j (jaxcnn.training); 0: off
    c.aux_loss_weight = 0.3  # GoogLeNet/Inception auxiliary heads (the paper's 0.3)

    c.schedule = "constant"  # constant | piecewise | step | cosine | plateau
    c.warmup_epochs = 0.0
    c.piecewise_boundaries = ()  # epochs, for 'piecewise' (tuples: --config.piecewise_boundaries='(4, 6)')
    c.piecewise_values = ()  # learning rates, one more than boundaries
    c.step_decay_epochs = 30  # 'step': multiply by step_decay_factor every step_decay_epochs
    c.step_decay_factor = 0.1
    c.plateau_factor = 0.1
    c.plateau_patience = 2  # evaluations without improvement of the validation loss
    c.plateau_cooldown = 0

    c.dtype = "float32"  # bfloat16: compute in bf16, params and optimizer state in fp32
    c.parallel = "pmap"  # pmap | shard_map | jit | fsdp (README "Parallel training"); pmap on one device: plain jit
    c.seed = 0
    # k > 1: k train steps per host call (one program, lax.scan), for steps of a few ms where the dispatch and
    # the loop's per-step host work show; the 'single' driver only (one device). -1: AUTO_STEPS_PER_CALL where
    # the driver can, else 1 (train/setup.py). Calls end where the loop logs, evaluates or checkpoints.
    c.steps_per_call = 1
    c.skip_nonfinite = False  # True: skip non-finite updates (optax.apply_if_finite) instead of stopping
    c.max_consecutive_nonfinite = 10  # with skip_nonfinite: give up skipping after this many in a row

    c.log_every_steps = -1  # -1: sized to the run (train/periods.py: ~1% of its steps, at least 10)
    c.eval_every_steps = -1  # -1: every epoch, or every few where evaluations would cost > 5% (train/periods.py)
    c.eval_steps = -1  # -1: the whole eval split; > 0: only its first eval_steps batches (quick checks)
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.init_from = ""  # an orbax checkpoint directory (e.g. from `python -m jaxcnn.convert`)
    c.freeze_backbone = False  # with init_from: train only the classifier head
    c.reinit_head = False  # with init_from: a fresh classifier head when the class counts differ
    c.debug_nan_step = -1  # test hook: NaN images at this step (a NaN loss where activations keep NaN)
    return c


def imagenet_config(model: str) -> ml_collections.ConfigDict:
    """The ImageNet part every paper recipe shares: the dataset, torchvision's mean/std, Inception-style crops and
    flips (recipes with other crops turn them off), and log/checkpoint periods sized for long runs."""
    c = get_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.normalize = "imagenet"
    c.augment.random_resized_crop = True
    c.augment.horizontal_flip = True
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    return c
