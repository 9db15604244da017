"""GoogLeNet on ImageNet as Szegedy et al. 2014 trained it (section 6), with both auxiliary classifiers.

The paper: SGD momentum 0.9, the learning rate decreased by 4% every 8 epochs; the auxiliary losses weighted
0.3; dropout 0.4 before the classifier (0.7 in the auxiliary heads); crops of 8%-100% of the image area with
aspect ratio in [3/4, 4/3] (the "Inception crop"), flips and Howard's photometric distortions.

Deviations (the paper leaves these out, or they need a cluster):
  * synchronous SGD at batch 256 (the paper: asynchronous SGD on DistBelief, batch not given);
  * base learning rate 0.01 and weight decay 2e-4, 90 epochs: not stated in the paper;
  * photometric distortions as brightness/contrast/saturation jitter of 0.4 (Howard's exact ops are not given);
  * no Polyak averaging of the final weights.
"""

from train.configs import default


def get_config(model: str = "googlenet_2014"):
    c = default.imagenet_config(model)
    c.model_kwargs.aux_logits = True
    c.aux_loss_weight = 0.3
    c.augment.color_jitter = 0.4
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
