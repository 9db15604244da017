"""VGG on ImageNet as Simonyan & Zisserman 2014 trained it (section 3.1); used for every VGG depth.

The paper: SGD batch 256, momentum 0.9, weight decay 5e-4, dropout 0.5 in the first two dense layers; learning
rate 0.01 divided by 10 when the validation accuracy stopped improving (three times), 370k iterations (74
epochs); training scale S jittered in [256, 512] (the shorter side rescaled to S), random 224 crops, horizontal
flips and the random RGB colour shift of Krizhevsky et al. (PCA lighting, std 0.1).

Deviations:
  * initialization: LeCun normal (flax's default) rather than the paper's net-A pre-training or Glorot;
  * the plateau is detected on the validation loss, patience 2 evaluations;
  * evaluation on a single centre 224 crop of the image with shorter side 256 (the paper: dense evaluation
    over several scales).
"""

from train.configs import default


def get_config(model: str = "vgg16"):
    c = default.imagenet_config(model)
    c.augment.random_resized_crop = False  # the paper's crops: scale jitter below
    c.augment.scale_jitter = (256, 512)
    c.augment.pca_lighting = 0.1
    c.crop_fraction = 224 / 256
    c.batch_size = 256
    c.num_epochs = 74
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "plateau"
    c.plateau_factor = 0.1
    c.plateau_patience = 2
    return c
