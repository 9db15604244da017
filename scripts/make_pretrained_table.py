"""Regenerate the pretrained-weights table and the ImageNet class names that jaxcnn ships as data.

    python scripts/make_pretrained_table.py

Reads the installed torchvision (`torchvision.models.*_Weights`: URL, the sha256 prefix in the file name,
eval transform sizes, published ImageNet-1k accuracy, category names) and Keras (`keras.applications` VGG16 /
VGG19: URL and md5 in their source) and writes jaxcnn/data/pretrained_weights.json and
jaxcnn/data/imagenet_classes.txt, so that jaxcnn needs neither library to find and check a file.
tests/test_pretrained.py checks both files against the installed libraries.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLE = ROOT / "jaxcnn" / "data" / "pretrained_weights.json"
CLASSES = ROOT / "jaxcnn" / "data" / "imagenet_classes.txt"

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision builds googlenet and inception_v3 with transform_input=True when it loads their weights: the
# network sees (pixel - 0.5) / 0.5. jaxcnn keeps normalization out of the model, so the table says so instead.
TRANSFORM_INPUT = {"googlenet", "inception_v3"}
# keras.applications.vgg16/vgg19 `preprocess_input` ("caffe" mode): BGR, 0-255, minus the BGR ImageNet mean.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# Keras's applications table (keras.io/api/applications): ImageNet-1k validation top-1 / top-5 accuracy.
KERAS_METRICS = {"vgg16": (71.3, 90.1), "vgg19": (71.3, 90.0)}


def torchvision_entries(model_names) -> list[dict]:
    import torchvision.models as tvm

    entries = []
    for name in sorted(set(tvm.list_models(module=tvm)) & set(model_names)):
        enum = tvm.get_model_weights(name)
        for weights in enum:
            if "ImageNet-1K" not in weights.meta.get("_metrics", {}) or weights.name.endswith("FEATURES"):
                continue  # vgg16's IMAGENET1K_FEATURES has no classifier
            transform = weights.transforms.keywords
            metrics = weights.meta["_metrics"]["ImageNet-1K"]
            filename = weights.url.rsplit("/", 1)[1]
            mean, std = ((0.5,) * 3, (0.5,) * 3) if name in TRANSFORM_INPUT else (IMAGENET_MEAN, IMAGENET_STD)
            entries.append({
                "model": name, "source": "torchvision", "weights": weights.name,
                "default": weights is enum.DEFAULT, "url": weights.url,
                "hash_algorithm": "sha256", "hash": re.search(r"-([a-f0-9]+)\.", filename).group(1),
                "resize": int(transform.get("resize_size", 256)), "crop": int(transform["crop_size"]),
                "channels": "RGB", "mean": list(mean), "std": list(std),
                "top1": metrics["acc@1"], "top5": metrics["acc@5"], "num_params": weights.meta["num_params"]})
    return entries


def keras_entries() -> list[dict]:
    from keras.src.applications import vgg16, vgg19

    entries = []
    for name, module in (("vgg16", vgg16), ("vgg19", vgg19)):
        source = inspect.getsource(module)
        # The first file_hash in the module belongs to WEIGHTS_PATH (the with-top file); the second to no-top.
        md5 = re.search(r'file_hash="([0-9a-f]+)"', source).group(1)
        entries.append({
            "model": name, "source": "keras", "weights": "imagenet", "default": True, "url": module.WEIGHTS_PATH,
            "hash_algorithm": "md5" if len(md5) == 32 else "sha256", "hash": md5,
            "resize": 256, "crop": 224, "channels": "BGR",
            "mean": [m / 255 for m in CAFFE_MEAN_BGR], "std": [1 / 255] * 3,
            "top1": KERAS_METRICS[name][0], "top5": KERAS_METRICS[name][1], "num_params": None})
    return entries


def main() -> None:
    import torchvision.models as tvm

    from jaxcnn.models import list_models

    entries = torchvision_entries(list_models()) + keras_entries()
    TABLE.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")  # one entry a line
    categories = tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    CLASSES.write_text("\n".join(categories) + "\n")
    print(f"wrote {TABLE} ({len(entries)} entries) and {CLASSES} ({len(categories)} names)")


if __name__ == "__main__":
    main()
