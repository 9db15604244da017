"""The errors the training program raises for a run that cannot go on; train.main prints their one line."""


class TrainingError(ValueError):
    """A run that cannot go on (non-finite loss, no checkpoint to evaluate...); the message says why."""


class ConfigChanged(ValueError):
    """A rerun whose config would change the training of the workdir's checkpoints."""
