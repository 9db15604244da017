"""ResNet-50 with the flax ImageNet example's recipe: SGD momentum 0.9 with Nesterov, learning rate
0.1 * batch_size / 256 (0.1 at batch 256), 5 linear warm-up epochs then cosine decay over 100 epochs,
weight decay 1e-4, no label smoothing; Inception-style crops and flips. Scale learning_rate with batch_size.
"""

from train.configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet50"
    c.dataset = "imagenet2012"
    c.normalize = "imagenet"
    c.augment.random_resized_crop = True
    c.augment.horizontal_flip = True
    c.batch_size = 256
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.learning_rate = 0.1 * c.batch_size / 256
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.schedule = "cosine"
    c.warmup_epochs = 5.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    return c
