"""DenseNet on ImageNet as Huang et al. 2017 trained it (section 4.2); used for every depth.

The paper: batch 256, 90 epochs, SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 10 at epochs 30
and 60, weight decay 1e-4; the augmentation of the fb.resnet.torch recipe (scale and aspect crops, flips).

Deviations: Inception-style crops and flips stand for fb.resnet.torch's augmentation (no colour or lighting
jitter).
"""

from train.configs import default


def get_config(model: str = "densenet121"):
    c = default.imagenet_config(model)
    c.batch_size = 256
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.schedule = "piecewise"
    c.piecewise_boundaries = (30, 60)
    c.piecewise_values = (0.1, 0.01, 0.001)
    return c
