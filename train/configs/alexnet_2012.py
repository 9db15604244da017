"""AlexNet as Krizhevsky et al. 2012 trained it: SGD 0.01 momentum 0.9, batch 128, weight decay 5e-4,
the learning rate divided by 10 when the validation error stops improving, ~90 epochs; 224/227 random
crops, horizontal flips and PCA lighting noise (std 0.1)."""

from train.configs import default


def get_config():
    c = default.get_config()
    c.model = "alexnet_2012"
    c.dataset = "imagenet2012"
    c.normalize = "imagenet"
    c.augment.random_resized_crop = True
    c.augment.horizontal_flip = True
    c.augment.pca_lighting = 0.1
    c.batch_size = 128
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "plateau"
    c.plateau_factor = 0.1
    c.plateau_patience = 2
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    return c
