"""ResNet on ImageNet with the large-batch recipe of Goyal et al. 2017 (used for every ResNet/ResNeXt depth).

Learning rate 0.1 x global batch / 256 (`lr_per_256`, computed from the batch the run actually uses, so
`--batch_size=1024` trains at 0.4), 5 linear warm-up epochs then cosine decay to 0 over 90 epochs; SGD momentum
0.9, weight decay 1e-4 on the kernels; Inception-style crops and flips.

Deviations from He et al. 2015: cosine decay instead of ÷10 on plateaus (600k iterations), Inception crops
instead of the [256, 480] scale jitter and colour augmentation; Nesterov momentum (flax's ImageNet example).
"""

from train.configs import default


def get_config(model: str = "resnet50"):
    c = default.imagenet_config(model)
    c.batch_size = 256
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.lr_per_256 = 0.1
    c.learning_rate = 0.1  # shown for batch 256; the run uses lr_per_256 x batch_size / 256
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_epochs = 5.0
    return c
