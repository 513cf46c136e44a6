"""Cost of the augmentation options: AutoAugment ``official`` vs ``torchvision`` magnitudes,
and ``--cutout`` on the per-batch (``standard``) and per-image (``autoaugment``) paths.

Prints images/s on one core (one tf.data thread, one intra-op thread) for CIFAR-size uint8
images in memory, each configuration in a fresh subprocess. Figures depend on the machine and
its load: say which (ours: a 2-vCPU AMD EPYC, Zen 4, AVX-512 incl. VNNI/BF16, TF's oneDNN on,
shared by 5 engineers while measuring).

Usage: ``python benchmarks/augment_options.py [--images 2048]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = (("standard", "official", 0), ("standard", "official", 16),
         ("autoaugment", "torchvision", 0), ("autoaugment", "official", 0),
         ("autoaugment", "official", 16), ("randaugment", "official", 0))


def child(name: str, semantics: str, cutout: int, n: int, batch: int = 128) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from sila_keras.data.pipeline import train_dataset

    x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    t0 = time.perf_counter()
    ds = train_dataset(x, np.zeros(n, np.int32), batch, augment=name, epochs=2, options=opts,
                       cutout=cutout, autoaugment_semantics=semantics)
    it = iter(ds)
    steps = -(-n // batch)
    for _ in range(steps):  # epoch 1: graph build + warm-up
        next(it)
    t1 = time.perf_counter()
    count = sum(int(next(it)[0].shape[0]) for _ in range(steps))
    return {"first_epoch_s": round(t1 - t0, 1),
            "img_per_s_per_core": round(count / (time.perf_counter() - t1), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        name, semantics, cutout = args.child
        print(json.dumps(child(name, semantics, int(cutout), args.images)))
        return
    print("2-vCPU AMD EPYC (Zen 4, AVX-512), shared by 5 engineers; one core per measurement")
    for name, semantics, cutout in CASES:
        out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--child",
                              name, semantics, str(cutout)], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"{name} ({semantics if name == 'autoaugment' else '-'}), cutout {cutout}"
        print(f"{label:40s} {r['img_per_s_per_core']:9.1f} img/s per core "
              f"(first epoch incl. graph build {r['first_epoch_s']} s)", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
