"""ZFNet on ImageNet as Zeiler & Fergus 2013 trained it (section 3).

The paper: batch 128, SGD learning rate 0.01, momentum 0.9, the rate annealed by hand when the validation
error plateaued; weights 0.01, biases 0; dropout 0.5 in the dense layers; 224 crops of images rescaled to
256 (corners and centre) with flips; 70 epochs.

Deviations: the rate is divided by 10 on a plateau of the validation loss (patience 2 evaluations) instead of
by hand; random 224 crops of the shorter-side-256 image; LeCun-normal weights; no renormalisation of filters
whose RMS passes 0.1.
"""

from train.configs import default


def get_config(model: str = "zfnet"):
    c = default.imagenet_config(model)
    c.augment.random_resized_crop = False  # the paper's crops: scale jitter below
    c.augment.scale_jitter = (256, 256)
    c.crop_fraction = 224 / 256
    c.batch_size = 128
    c.num_epochs = 70
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.schedule = "plateau"
    c.plateau_factor = 0.1
    c.plateau_patience = 2
    return c
