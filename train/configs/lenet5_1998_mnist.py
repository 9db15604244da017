"""LeNet-5 on the full MNIST as LeCun, Bottou, Bengio & Haffner 1998 trained it (section III.C and appendix C).

The paper: 20 passes over the 60,000 training images; weights uniform in +-2.4/F_in (`model_kwargs.paper_init`);
a global learning rate of 0.0005 for 2 passes, 0.0002 for 3, 0.0001 for 3, 0.00005 for 4 and 0.00001 after;
test error 0.95% (0.8% with distorted training digits).

Deviations:
  * SGD with momentum 0.9, batch 32, on a softmax cross-entropy over the RBF outputs, in place of the paper's
    per-example stochastic diagonal Levenberg-Marquardt on its MAP loss. The paper's sequence of rates keeps
    its shape and boundaries, scaled by 4 (0.002 ... 0.00004; SDLM divides its global rate by a curvature
    estimate mu + h_kk, so its steps are larger than the rate says); at rates near 0.02 the scaled tanh units
    saturate.
  * two-pixel pad-and-crop shifts and +-8 degree rotations of the training digits (the paper's 0.8% run used
    distortions; its 0.95% run did not).

Measured (full MNIST as an image folder, 45,000 training images): best validation 98.36% by epoch 12 with this
recipe (run stopped at epoch 12), 97.9% by epoch 10 with Adam and the sequence x 2: both short of the paper's
0.95% test error; the <= 1.0% target is not reached by this recipe yet (lenet5's lenet5_mnist.py reaches 0.91%).
"""

from train.configs import default


def get_config(model: str = "lenet5_1998"):
    c = default.get_config()
    c.model = model
    c.model_kwargs.paper_init = True
    c.dataset = "mnist"
    c.normalize = "mnist"
    c.crop_fraction = 1.0  # a folder of digits: resized to the input, not centre-cropped like photos
    # A folder lists its files class by class; a 10,000 buffer then feeds batches of two or three digits (98.2%
    # validation after 11 epochs). The buffer holds file names only (decoding comes after), so take them all.
    c.shuffle_buffer = 60_000
    c.augment.random_crop_padding = 2
    c.augment.rotation_degrees = 8.0
    c.batch_size = 32
    c.eval_batch_size = 500
    c.num_epochs = 20
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.002
    c.schedule = "piecewise"
    c.piecewise_boundaries = (2, 5, 8, 12)  # passes, as the paper's
    c.piecewise_values = (0.002, 0.0008, 0.0004, 0.0002, 0.00004)  # the paper's x 4
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    return c
