"""Inception-v3 on ImageNet as Szegedy et al. 2015 trained it (section 8), at 299x299 with its auxiliary head.

The paper: RMSProp with decay 0.9 and epsilon 1.0, learning rate 0.045 multiplied by 0.94 every two epochs,
gradient clipping at 2.0 (global norm), label smoothing 0.1, batch 32 per replica on 50 replicas.

Deviations: one synchronous batch of 256 at the paper's rate (the paper: 50 replicas of 32, asynchronous);
100 epochs, auxiliary loss weight 0.3 and Inception crops with flips: not stated in the paper.
"""

from train.configs import default


def get_config(model: str = "inception_v3"):
    c = default.imagenet_config(model)
    c.model_kwargs.aux_logits = True
    c.aux_loss_weight = 0.3
    c.batch_size = 256
    c.num_epochs = 100
    c.optimizer = "rmsprop"
    c.rmsprop_decay = 0.9
    c.eps = 1.0
    c.momentum = 0.9
    c.learning_rate = 0.045
    c.schedule = "step"
    c.step_decay_epochs = 2
    c.step_decay_factor = 0.94
    c.grad_clip_norm = 2.0
    c.label_smoothing = 0.1
    return c
