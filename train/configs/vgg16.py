"""VGG-16 as Simonyan & Zisserman 2014 trained it: SGD 0.01 momentum 0.9, batch 256, weight decay 5e-4,
dropout 0.5 in the head, the learning rate divided by 10 when validation accuracy stops improving
(three times in 74 epochs); random crops and horizontal flips."""

from train.configs import default


def get_config():
    c = default.get_config()
    c.model = "vgg16"
    c.dataset = "imagenet2012"
    c.normalize = "imagenet"
    c.augment.random_resized_crop = True
    c.augment.horizontal_flip = True
    c.batch_size = 256
    c.num_epochs = 74
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
