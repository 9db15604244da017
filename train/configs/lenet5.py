"""The seeds' Keras LeNet-5 on MNIST: SGD momentum 0.9, batch 32, a piecewise-constant learning rate.

The seeds' rates (5e-4 -> 2e-4 -> 5e-5 -> 1e-5 over 20 epochs) are far too small to train in minutes.
Measured on the embedded MNIST subset (10k train / 2k validation), `python -m train.main --model=lenet5`,
on 2 CPU cores shared with other jobs:
  * 0.02 -> 0.005 -> 0.001 (epochs 4, 6), 8 epochs, no augmentation: 97.65% (train top-1 99.4%: it overfits);
  * this recipe, 0.05 -> 0.01 -> 0.002 (epochs 5, 8), 10 epochs, 2-pixel pad-and-crop, +-8 degree rotations:
    98.15% after epoch 6, 98.40% best (epochs 8-10); 7m42s wall at load ~12 (2m05s of CPU time).
"""

from train.configs import default


def get_config():
    c = default.get_config()
    c.model = "lenet5"
    c.dataset = "embedded_mnist"
    c.augment.random_crop_padding = 2
    c.augment.rotation_degrees = 8.0
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = 10
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.05
    c.schedule = "piecewise"
    c.piecewise_boundaries = (5, 8)  # epochs
    c.piecewise_values = (0.05, 0.01, 0.002)
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    return c
