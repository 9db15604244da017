"""AlexNet on ImageNet as Krizhevsky, Sutskever & Hinton 2012 trained it (section 5).

The paper: SGD batch 128, momentum 0.9, weight decay 5e-4; learning rate 0.01, divided by 10 when the validation
error stopped improving (three times), about 90 epochs; weights N(0, 0.01), biases 1 in conv2, conv4, conv5 and
the hidden dense layers, 0 elsewhere (`model_kwargs.paper_init`); images rescaled to 256, random 224 (in effect
227) crops and their mirror images; PCA lighting noise with std 0.1; dropout 0.5 in the first two dense layers.

Deviations:
  * the shorter side is rescaled to 256 and the random 227 crop is taken from the whole rescaled image (the
    paper first cropped the central 256x256 square);
  * the plateau is detected on the validation loss (the paper watched the error rate), patience 2 evaluations;
  * one evaluation per epoch, on the centre 227 crop (the paper averaged ten patches: corners, centre, flips).
Also used for alexnet, alexnet_bn (without paper_init, which only alexnet_2012 defines) and nin, whose paper
trained it as AlexNet.
"""

from train.configs import default


def get_config(model: str = "alexnet_2012"):
    c = default.imagenet_config(model)
    c.augment.random_resized_crop = False  # the paper's crops: scale jitter below
    c.augment.scale_jitter = (256, 256)
    c.augment.pca_lighting = 0.1
    c.crop_fraction = 227 / 256
    c.batch_size = 128
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "plateau"
    c.plateau_factor = 0.1
    c.plateau_patience = 2
    if model == "alexnet_2012":
        c.model_kwargs.paper_init = True
    return c
