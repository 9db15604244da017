"""Where weights come from: `load_init_variables(source)`, the one function every reader of weights calls.

Training (`config.init_from`), evaluation (`--mode=eval`), `train.predict` and `train.visualize` all read
weights through it, so a new kind of source (published weights by name, a .pth or .h5 file) is added here
once and works everywhere.
"""

from __future__ import annotations

from pathlib import Path

from jaxcnn import checkpoint as ckpt


def load_init_variables(source: str | Path, model_name: str | None = None) -> tuple[dict, dict]:
    """(variables {'params', 'batch_stats'} as numpy arrays, metadata) from `source`:

    * 'torchvision' / 'keras' (or 'torchvision:IMAGENET1K_V1'), or a publisher's .pth / .h5 file: the
      published weights of `model_name`, converted (`jaxcnn.pretrained`);
    * a training workdir (it holds checkpoints/): the params and batch_stats of its newest readable
      checkpoint, read alone (no optimizer state, so any optimizer settings can use them); the metadata is
      the checkpoint's (model, num_classes, image_shape, config, input) plus its `step`;
    * a saved-variables directory (`python -m jaxcnn.convert`, `checkpoint.save_variables`).

    Raises ValueError with one line for anything else.
    """
    from jaxcnn import pretrained

    if pretrained.handles(str(source)):
        if model_name is None:
            raise ValueError(f"{source}: published weights need a model name (--model)")
        return pretrained.load_init(str(source), model_name)
    path = Path(source).expanduser()
    if ckpt.checkpoint_dir(path).is_dir():
        restored = ckpt.restore_variables(path)
        if restored is None:
            raise ValueError(f"{path} holds no readable checkpoint in {ckpt.checkpoint_dir(path)}")
        variables, metadata, step = restored
        return variables, dict(metadata, step=step)
    if not path.exists():
        raise FileNotFoundError(f"no such workdir or saved variables: {path}")
    return ckpt.load_variables(path)
