"""GoogLeNet as Szegedy et al. 2014 trained it: SGD momentum 0.9, the learning rate cut by 4% every 8 epochs,
the two auxiliary classifiers' losses weighted 0.3; Inception-style crops (8%-100% of the area) and flips.
The paper gives no base learning rate or weight decay: 0.01 and 2e-4 here (torchvision's reference: 1e-4)."""

from train.configs import default


def get_config(model: str = "googlenet"):
    c = default.imagenet_config(model)
    c.model_kwargs.aux_logits = True
    c.aux_loss_weight = 0.3
    c.batch_size = 256
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 2e-4
    c.schedule = "step"
    c.step_decay_epochs = 8
    c.step_decay_factor = 0.96
    return c
