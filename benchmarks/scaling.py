"""Scaling on paper: 1→8 GPUs (MirroredStrategy) and 1→4 machines (MultiWorkerMirroredStrategy).

Synchronous data parallelism all-reduces every gradient every step. Per step and worker,
a ring all-reduce moves ``2(n−1)/n × 4·P`` bytes (P trainable parameters, float32
gradients — also under mixed precision, whose master weights stay float32) in
``2(n−1)`` latency-bound hops. Keras' TensorFlow trainer reduces the gradients after the
backward pass, so we assume *no* overlap of communication with compute (conservative):

    t_step(n) = t_compute + t_allreduce(n),   speed-up(n) = n · t_compute / t_step(n)

with the per-device batch held fixed (the global batch grows n×; see docs/distributed.md
for the learning-rate side). Compute time comes from the model's counted multiply-adds
(training ≈ 3 × forward ≈ 6 FLOP per MAC per image) and a stated device throughput; this
CPU's *measured* step time (``--step-ms``, or measured here) gives the CPU case and this
CPU's achieved FLOP/s. Every assumption is a flag; the defaults are printed with the table.

    python benchmarks/scaling.py [--models vgg19,resnet18] [--step-ms vgg19=900,resnet18=700]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# Interconnects: (name, bus bandwidth GB/s as NCCL reports it for a ring all-reduce, hop latency µs)
NVLINK = ("NVLink (V100 DGX-1 class)", 100.0, 10.0)
PCIE = ("PCIe 3.0 x16 through the host", 10.0, 10.0)
ETH25 = ("25 GbE", 2.5, 50.0)
IB100 = ("100 Gb/s InfiniBand", 11.0, 5.0)
ETH10 = ("10 GbE", 1.1, 50.0)


def forward_macs(model) -> int:
    """Multiply-adds of one forward pass for one image (conv, depthwise conv, dense)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw, c, mult = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * c * mult
        elif isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * cin * cout
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def measure_step_ms(model, batch: int, steps: int = 3) -> float:
    import tensorflow as tf

    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model

    compile_model(model, TrainConfig.create("bench", "m", milestones=()), 10, steps=1)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(np.zeros(batch, np.int32))
    model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return 1e3 * (time.perf_counter() - t) / steps


def allreduce_s(param_bytes: float, n: int, link) -> float:
    """Ring all-reduce time of ``param_bytes`` over ``n`` peers on ``link``."""
    if n <= 1:
        return 0.0
    _, gbs, lat_us = link
    return 2 * (n - 1) / n * param_bytes / (gbs * 1e9) + 2 * (n - 1) * lat_us * 1e-6


def scenario(t_compute: float, param_bytes: float, sizes, inner=None, outer=None,
             per_machine: int = 1) -> list[dict]:
    """Speed-up over ``sizes[0]`` for each n in ``sizes``. Without ``outer``, n devices on
    link ``inner``; with it, n machines of ``per_machine`` devices (hierarchical: reduce
    inside each machine on ``inner``, then a ring across machines on ``outer``)."""
    def t_step(n):
        if outer is None:
            return t_compute + allreduce_s(param_bytes, n, inner)
        t = allreduce_s(param_bytes, per_machine, inner) if per_machine > 1 else 0.0
        return t_compute + t + allreduce_s(param_bytes, n, outer)

    base = t_step(sizes[0])
    rows = []
    for n in sizes:
        speedup = n / sizes[0] * base / t_step(n)
        rows.append({"n": n, "t_comm_ms": 1e3 * (t_step(n) - t_compute),
                     "efficiency": speedup / (n / sizes[0]), "speedup": speedup})
    return rows


def estimate(name: str, heads: int, step_ms: float | None, cpu_batch: int, gpu_batch: int,
             gpu_tflops: float) -> dict:
    from sila_keras import build_sila_model
    from sila_keras.core.heads import trainable_params

    model = build_sila_model(name, 10, heads)
    params, macs = trainable_params(model), forward_macs(model)
    if step_ms is None:
        step_ms = measure_step_ms(model, cpu_batch)
    pbytes = 4.0 * params
    train_flop_img = 6.0 * macs
    cpu_t = step_ms / 1e3
    gpu_t = train_flop_img * gpu_batch / (gpu_tflops * 1e12)
    out = {
        "model": name, "heads": heads, "params": params, "grad_mb": pbytes / 1e6,
        "fwd_gmac_per_img": macs / 1e9, "cpu_step_ms": step_ms, "cpu_batch": cpu_batch,
        "cpu_gflops_achieved": train_flop_img * cpu_batch / cpu_t / 1e9,
        "gpu_batch": gpu_batch, "gpu_step_ms": 1e3 * gpu_t,
        "gpus_one_machine": {link[0]: scenario(gpu_t, pbytes, (1, 2, 4, 8), inner=link)
                             for link in (NVLINK, PCIE)},
        "machines_8_gpus": {link[0]: scenario(gpu_t, pbytes, (1, 2, 4), inner=NVLINK, outer=link,
                                              per_machine=8) for link in (ETH25, IB100)},
        "cpu_machines": {link[0]: scenario(cpu_t, pbytes, (1, 2, 4), outer=link) for link in (ETH10,)},
    }
    return out


def print_estimate(e: dict) -> None:
    print(f"\n{e['model']} ({e['heads']} heads): {e['params']:,} params → {e['grad_mb']:.1f} MB of "
          f"gradients per step; {e['fwd_gmac_per_img']:.3f} GMAC/img forward")
    print(f"  this CPU: {e['cpu_step_ms']:.0f} ms/step at batch {e['cpu_batch']} "
          f"(≈{e['cpu_gflops_achieved']:.0f} GFLOP/s achieved); assumed GPU: "
          f"{e['gpu_step_ms']:.1f} ms/step at batch {e['gpu_batch']} per GPU")
    for title, key in (("GPUs in one machine", "gpus_one_machine"),
                       ("machines × 8 GPUs (NVLink inside; vs 1 machine)", "machines_8_gpus"),
                       ("CPU machines like this one", "cpu_machines")):
        for link, rows in e[key].items():
            cells = "  ".join(f"{r['n']}: {r['speedup']:.2f}× ({100 * r['efficiency']:.0f}%, "
                              f"+{r['t_comm_ms']:.1f} ms)" for r in rows)
            print(f"  {title}, {link}: {cells}")


def parse_step_ms(s: str | None) -> dict[str, float]:
    out = {}
    for item in (s or "").split(","):
        if item.strip():
            k, v = item.split("=")
            out[k.strip()] = float(v)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg19,resnet18")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--step-ms", default=None,
                   help="measured CPU ms/step per model, e.g. vgg19=900,resnet18=700 (else measured)")
    p.add_argument("--cpu-batch", type=int, default=32, help="batch of the measured CPU step")
    p.add_argument("--gpu-batch", type=int, default=128, help="per-GPU batch (the papers' 128)")
    p.add_argument("--gpu-tflops", type=float, default=7.0,
                   help="sustained training FLOP/s per GPU, in TFLOP/s (≈ half a V100's fp32 peak)")
    p.add_argument("--json", default=None, help="also write the estimates to this JSON file")
    args = p.parse_args(argv)
    steps = parse_step_ms(args.step_ms)
    print(f"Assumptions: no compute/communication overlap; float32 gradients; ring all-reduce; "
          f"GPU sustains {args.gpu_tflops} TFLOP/s; links (bus GB/s, hop µs): "
          + "; ".join(f"{n} {g:g}, {u:g}" for n, g, u in (NVLINK, PCIE, ETH25, IB100, ETH10)))
    results = [estimate(m, args.heads, steps.get(m), args.cpu_batch, args.gpu_batch, args.gpu_tflops)
               for m in args.models.split(",")]
    for e in results:
        print_estimate(e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
