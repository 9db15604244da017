"""A train step on an accelerator: ours in fp32 and bf16 beside torchvision's (AMP bf16 and fp32, channels_last).

    python benchmarks/gpu_step.py --model=resnet50 --batch_size=256 --steps=20 [--json=F]
    python benchmarks/gpu_step.py --model=resnet18 --batch_size=2 --image_size=64 --steps=2   # a CPU smoke run

Ours is train_step.py's step (jaxcnn.training.train_step, jitted, the state donated) with
`config.dtype` float32 or bfloat16 (bf16 compute, fp32 parameters and optimizer state). Torch runs the
torchvision model in channels_last memory format, SGD momentum, fp32 and under `torch.autocast(bfloat16)`
(AMP; bf16 needs no loss scaling), on CUDA when there is one. MFU = (XLA's FLOP count of our fp32 step) x
steps/s / the device's peak: the dense bf16 tensor-core peak for bf16/AMP, the TF32 peak for fp32 (both
frameworks' default for fp32 matmuls and convolutions on NVIDIA GPUs). Peaks come from PEAK_TFLOPS by device
name; on a device not listed (a CPU) the measured `jnp.dot` 2048^2 rate stands in for both.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train_step.py beside this file

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()

import jax
import numpy as np
import train_step as ts

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets: (bf16 tensor core, tf32 tensor core).
PEAK_TFLOPS = {
    "H200": (989.0, 494.0), "H100 80GB HBM3": (989.0, 494.0), "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0), "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0), "V100": (125.0, 15.7),  # V100: fp16 tensor cores, no tf32 (fp32 CUDA cores)
}


def peak_flops(device_kind: str) -> tuple[float, float, str]:
    """(bf16 peak, fp32 peak, where from) in FLOP/s for a device kind string."""
    for name, (bf16, tf32) in PEAK_TFLOPS.items():  # the more specific names come first
        if name.lower() in device_kind.lower():
            return bf16 * 1e12, tf32 * 1e12, f"data sheet ({name})"
    measured = ts.matmul_peak_flops()
    return measured, measured, "measured jnp.dot 2048^2 (no data sheet for this device)"


def bench_torch(model_name: str, batch: dict, steps: int, amp: bool) -> float:
    """Seconds per torchvision train step, channels_last, fp32 or AMP bf16, on CUDA when available."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = ts.torch_model(model_name, ts.get_spec(model_name).num_classes).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.from_numpy(np.transpose(batch["image"], (0, 3, 1, 2)).copy()).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(batch["label"].astype(np.int64)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return ts.time_steps(run, steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    batch = ts.random_batch(args.model, args.batch_size, args.image_size)
    kind = jax.devices()[0].device_kind
    peak_bf16, peak_fp32, peak_source = peak_flops(kind)
    result = {"model": args.model, "batch_size": args.batch_size, "image_size": args.image_size,
              "device": kind, "peak_source": peak_source}
    flops = None
    for dtype, peak in (("float32", peak_fp32), ("bfloat16", peak_bf16)):
        ours = ts.bench_ours(args.model, batch, args.steps, dtype)
        flops = flops or ours["flops_per_step"]  # the fp32 count: the same math whatever the precision
        result[f"ours_{dtype}"] = {"images_per_sec": args.batch_size / ours["seconds"],
                                   "mfu": flops / ours["seconds"] / peak, "compile_s": ours["compile_s"]}
        print(f"ours {dtype}: {result[f'ours_{dtype}']}", file=sys.stderr, flush=True)
    for label, amp, peak in (("torch_float32", False, peak_fp32), ("torch_amp_bf16", True, peak_bf16)):
        seconds = bench_torch(args.model, batch, args.steps, amp)
        result[label] = {"images_per_sec": args.batch_size / seconds, "mfu": flops / seconds / peak}
        print(f"{label}: {result[label]}", file=sys.stderr, flush=True)
    result["ours_over_torch_float32"] = (result["ours_float32"]["images_per_sec"] /
                                         result["torch_float32"]["images_per_sec"])
    result["ours_bf16_over_torch_amp"] = (result["ours_bfloat16"]["images_per_sec"] /
                                          result["torch_amp_bf16"]["images_per_sec"])
    return ts.report(result, args.json)


if __name__ == "__main__":
    main()
