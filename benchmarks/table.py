"""The README's performance table: `train_step.py --vs=torch` for each benchmarked model (`--vs=torch,keras`
where keras.applications has the model), one process each (so every peak RSS is that model's own), then the
input pipeline, as a Markdown table.

    python benchmarks/table.py [--models=lenet5,resnet18] [--steps=10] [--json_dir=DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from host import cpu_name  # beside this file: `python benchmarks/table.py` puts benchmarks/ on the path

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("lenet5", "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "inception_v3", "densenet121")
KERAS = ("vgg16", "resnet50", "inception_v3", "densenet121")  # with a keras.applications peer (--vs=keras)


def run(script: str, args: list[str], json_path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                    os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, os.path.join(HERE, script), *args, f"--json={json_path}"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json_dir", default=None, help="keep each run's JSON here")
    args = parser.parse_args(argv)
    out = args.json_dir or tempfile.mkdtemp()
    os.makedirs(out, exist_ok=True)

    huge_pages = "off" if os.environ.get("JAXCNN_NO_HUGE_PAGES") else "on"  # each run re-execs (jaxcnn/hugepages.py)
    print(f"{cpu_name()}, {os.cpu_count()} cores, fp32, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"huge pages {huge_pages}\n")
    print("| model | batch @ size | ours img/s | torch img/s | ours / torch | Keras-JAX img/s | ours / Keras "
          "| compile s | peak RSS MB | RSS / bound | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        peers = "torch,keras" if model in KERAS else "torch"
        r = run("train_step.py", [f"--model={model}", f"--vs={peers}", f"--steps={args.steps}"],
                os.path.join(out, f"{model}.json"))
        keras = (f"{r['keras_images_per_sec']:.1f} | {r['keras_ratio']:.2f}" if r.get("keras_ratio")
                 else "- | -")
        print(f"| {model} | {r['batch_size']} @ {r['image_size']} | {r['images_per_sec']:.1f} "
              f"| {r['torch_images_per_sec']:.1f} | {r['ratio']:.2f} | {keras} | {r['compile_s']:.1f} "
              f"| {r['peak_rss_mb']:.0f} | {r['rss_over_bound']:.2f} | {r['mfu']:.2f} |", flush=True)
    r = run("input_pipeline.py", [], os.path.join(out, "input_pipeline.json"))
    print(f"\nInput pipeline: CIFAR-size {r['cifar_images_per_sec']:.0f} img/s "
          f"({r['cifar_ratio']:.1f}x what resnet18 consumes at 32x32), ImageNet-size "
          f"{r['imagenet_images_per_sec']:.0f} img/s ({r['imagenet_ratio']:.1f}x resnet18 at 224x224).")


if __name__ == "__main__":
    main()
