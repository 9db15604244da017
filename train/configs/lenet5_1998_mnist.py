"""LeNet-5 on the full MNIST as LeCun, Bottou, Bengio & Haffner 1998 trained it (section III.C and appendix C).

The paper: 20 passes over the 60,000 training images; weights uniform in +-2.4/F_in (`model_kwargs.paper_init`);
a global learning rate of 0.0005 for 2 passes, 0.0002 for 3, 0.0001 for 3, 0.00005 for 4 and 0.00001 after;
test error 0.95% (0.8% with distorted training digits).

The loss is the paper's MAP criterion (eq. 9, `map_loss_j`): E = y_D + log(e^-j + sum_i e^-y_i) over the RBF
distances y_i, i.e. a cross-entropy over the logits -y_i with one more, constant, competitor -j. The paper does
not give j; 0.1 here.

Deviations:
  * Adam, batch 32, in place of the paper's per-example stochastic diagonal Levenberg-Marquardt. Adam is, like
    SDLM, a per-parameter diagonal rescaling of the gradient; plain SGD with the paper's tiny uniform start
    learns too slowly. The paper's sequence of rates keeps its shape and boundaries, scaled by 2
    (0.001 ... 0.00002) to Adam's usual range.
  * distorted training digits (+-2 pixel shifts, +-8 degree rotations), as the paper's 0.8% run; its planar
    affine distortions also scaled, squeezed and sheared.

Measured before (full MNIST as an image folder, 45,000 training images, +-2 px shifts and +-8 degree
rotations, digits resized 28 -> 32 where the paper pads them): 98.36% best
validation by epoch 12 with SGD momentum 0.9 and the sequence x 4, 97.9% by epoch 10 with Adam and the
sequence x 2; both underfit (training top-1 97.5% and 96.8% on the distorted digits).
With a plain softmax cross-entropy over -y_i (no distortions, digits padded 28 -> 32 as the paper's): 1.44% test
error (best validation 98.64%), training top-1 99.1% over the last epochs. The best-supported cause of that
underfitting is the loss: the distances span hundreds, so the plain cross-entropy's softmax is saturated and
an example classified with a margin of a few units stops contributing any gradient, while eq. 9 keeps pulling
every output towards its class's bitmap until y_D ~ j. Three epochs on the 45,000 digits (Adam, the sequence
x 2; training error on 10,000 of them): plain cross-entropy 2.19%, eq. 9 with j = 0.1 1.19%, the cross-entropy over
-0.1 y_i 1.08% (the same saturation, softened), LeCun-normal start instead of the paper's 1.78%; after one
epoch the paper's input scale (-0.1 .. 1.175), j = 1 and the sequence x 4 changed nothing beyond noise.
This recipe (eq. 9, j = 0.1): 1.02% test error (102 of 10,000), best validation 99.10% (99.04% by epoch 7),
training top-1 99.5% over the last 6 epochs (running batch means): 2 images short of the <= 1.0% target, on
45,000 training digits where the paper had 60,000; its 0.35% training error is not reached yet.
On 49,000 training digits (the last 10,000 of the 60,000 as the test split): 1.08% without distortions, **1.00%**
with them (100 of 10,000, best validation 98.6%; 3.6 min on an idle Intel host): at the <= 1.0% target, within
the 0.1 point that 10,000 test digits resolve.
"""

from train.configs import default


def get_config(model: str = "lenet5_1998"):
    c = default.get_config()
    c.model = model
    c.model_kwargs.paper_init = True
    c.dataset = "mnist"
    c.normalize = "mnist"
    c.crop_fraction = 1.0  # a folder of digits: resized to the input, not centre-cropped like photos
    c.batch_size = 32
    c.eval_batch_size = 500
    c.num_epochs = 20
    c.map_loss_j = 0.1  # the paper's MAP loss (eq. 9); the paper does not give j
    # The paper's 0.8% run trained on distorted digits (random planar affine maps); shifts and small rotations here.
    c.augment.random_crop_padding = 2
    c.augment.rotation_degrees = 8.0
    c.optimizer = "adam"
    c.learning_rate = 0.001
    c.schedule = "piecewise"
    c.piecewise_boundaries = (2, 5, 8, 12)  # passes, as the paper's
    c.piecewise_values = (0.001, 0.0004, 0.0002, 0.0001, 0.00002)  # the paper's x 2
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    return c
