"""Streaming data path and per-batch augmentation: speed and memory.

Builds a folder of ``--images`` (default 20,000) JPEGs at 160 px from the CIFAR-10 images
in ``../shared/data`` (upscaled; one folder per class, no split folders), then measures,
each in a fresh subprocess so peak RSS is that measurement's own:

(a) the training pipeline alone (decode + resize + standard augmentation, ``--cache none``)
    drained for one epoch: images/s and peak RSS, on the full folder and on a 10× smaller
    slice of it (``--limit-train``): RSS should stay flat as the data grows;
(b) ``sila-train … mobilenetv1 --image-size 160 --cache none --steps-per-epoch N`` on both:
    peak RSS (and wall time);
(c) mobilenetv1's train step alone at 160 px (images/s), to compare with (a);
(d) augmentation images/s per core (one tf.data thread, one intra-op thread) on CIFAR-size
    images in memory, per image (``Dataset.map`` per example, as before) vs per batch.

The generated folder is deleted at the end. Figures depend on the machine: say which
(the CI box is a 2-vCPU AMD EPYC with AVX2, shared).

Usage: ``python benchmarks/data_stream.py [--images 20000] [--steps 10] [--skip-train]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_folder(root: Path, n: int, size: int = 160) -> Path:
    """``root/<class>/*.jpg``: ``n`` JPEGs at ``size`` px, cycling over the CIFAR-10 images."""
    import io

    from PIL import Image
    from sila_keras.testing import CIFAR_TAR

    per_class = max(1, min(n, 5000) // 10)
    by_class: dict[str, list[bytes]] = {}
    with tarfile.open(CIFAR_TAR) as tf:
        for m in tf:
            parts = m.name.strip("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "train":
                got = by_class.setdefault(parts[1], [])
                if len(got) < per_class:
                    got.append(tf.extractfile(m).read())
    sources = [(c, b) for rank in range(per_class) for c, bs in sorted(by_class.items())
               if rank < len(bs) for b in [bs[rank]]]
    for i in range(n):
        cls, data = sources[i % len(sources)]
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        im = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
        im.save(d / f"{i:06d}.jpg", quality=90)
    return root


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- children


def child_pipeline(folder: str, limit: int | None, batch: int) -> dict:
    from sila_keras.data import load_dataset
    from sila_keras.data.pipeline import train_dataset

    data = load_dataset(f"folder:{folder}", cache="none", val_split=0.01, limit_train=limit,
                        image_size="160")
    ds = train_dataset(data.train, None, batch, augment="standard", drop_remainder=True)
    t0, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    dt = time.perf_counter() - t0
    return {"images": n, "img_per_s": round(n / dt, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def child_step(batch: int, steps: int) -> dict:
    import keras
    import numpy as np

    from sila_keras.core.heads import build_sila_model
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model

    cfg = TrainConfig.create("x", "mobilenetv1", milestones=())
    model = compile_model(build_sila_model("mobilenetv1", 10, 3, (160, 160, 3)), cfg, 10, steps=10)
    x = np.random.default_rng(0).uniform(0, 255, (batch, 160, 160, 3)).astype("float32")
    y = np.zeros(batch, "int32")
    model.train_on_batch(x, y)  # trace
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    dt = time.perf_counter() - t0
    keras.backend.clear_session()
    return {"img_per_s": round(batch * steps / dt, 1), "batch": batch}


def child_augment(name: str, mode: str, n: int = 4096, batch: int = 128) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from sila_keras.data.pipeline import (
        BATCH_AUGMENTATIONS,
        get_augmentation,
        get_batch_augmentation,
    )

    get_augmentation(name)  # registers autoaugment / randaugment
    if mode == "per_batch" and name not in BATCH_AUGMENTATIONS:
        return {"img_per_s_per_core": None}  # no vectorised form: the pipeline runs it per image

    x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    base = tf.data.Dataset.from_tensor_slices((x, tf.range(n)))
    if mode == "per_image":
        fn = get_augmentation(name)
        ds = base.map(lambda a, i: fn(a, tf.stack([7, i])), num_parallel_calls=1).batch(batch)
    else:
        fn = get_batch_augmentation(name)
        ds = base.batch(batch).map(
            lambda a, i: fn(a, tf.stack([tf.fill(tf.shape(i), 7), i], 1)), num_parallel_calls=1)
    ds = ds.with_options(opts)
    for _ in ds.take(2):
        pass
    t0 = time.perf_counter()
    count = sum(int(b.shape[0]) for b in ds)
    return {"img_per_s_per_core": round(count / (time.perf_counter() - t0), 1)}


# --------------------------------------------------------------------------- driver


def run_child(args: list[str], timeout: int = 3600) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_train(folder: Path, out: Path, limit: int | None, steps: int, batch: int) -> dict:
    """sila-train in a subprocess; peak RSS of that process (its own ru_maxrss)."""
    argv = [f"folder:{folder}", "mobilenetv1", "--image-size", "160", "--cache", "none",
            "--val-split", "0.01", "--limit-test", "64", "--steps-per-epoch", str(steps),
            "--epochs", "1", "--batch-size", str(batch), "--milestones", "", "--verbose", "0",
            "--out", str(out), "--name", f"n{limit or 'all'}"]
    if limit:
        argv += ["--limit-train", str(limit)]
    code = ("import resource, sys, time; from sila_keras.training.train import main; t = time.time(); "
            "rc = main(sys.argv[1:]); import json; print(json.dumps({'rc': rc, 'wall_s': "
            "round(time.time() - t, 1), 'peak_rss_mib': round(resource.getrusage("
            "resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                         text=True, timeout=3600)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=10, help="(b): --steps-per-epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--skip-train", action="store_true", help="skip (b) and (c)")
    p.add_argument("--skip-augment", action="store_true", help="skip (d)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "pipeline":
            res = child_pipeline(rest[0], int(rest[1]) or None, int(rest[2]))
        elif kind == "step":
            res = child_step(int(rest[0]), int(rest[1]))
        else:
            res = child_augment(rest[0], rest[1])
        print(json.dumps(res))
        return
    results: dict = {"machine": "2-vCPU AMD EPYC (AVX2, no AVX-512), shared with other jobs"}
    tmp = Path(tempfile.mkdtemp(prefix="sila-data-stream-"))
    small = max(1, args.images // 10)
    try:
        if not args.skip_augment:
            aug = {}
            for name in ("standard", "autoaugment", "randaugment"):
                aug[name] = {mode: run_child(["augment", name, mode])["img_per_s_per_core"]
                             for mode in ("per_image", "per_batch")}
                print(f"(d) augment {name:12s} img/s per core: per image {aug[name]['per_image']:8.1f}"
                      f"  per batch {aug[name]['per_batch'] or 'n/a (per image)'}", flush=True)
            results["augment_img_per_s_per_core"] = aug
        t0 = time.time()
        folder = build_folder(tmp / "photos", args.images)
        print(f"built {args.images} JPEGs at 160 px in {time.time() - t0:.0f}s", flush=True)
        pipe = {}
        for n in (small, 0):
            r = run_child(["pipeline", str(folder), str(n), str(args.batch)])
            pipe[str(n or args.images)] = r
            print(f"(a) pipeline {n or args.images:6d} images: {r['img_per_s']:8.1f} img/s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        results["pipeline"] = pipe
        if not args.skip_train:
            step = run_child(["step", "32", "5"])
            results["train_step_mobilenetv1_160"] = step
            ratio = pipe[str(args.images)]["img_per_s"] / step["img_per_s"]
            print(f"(c) mobilenetv1 160 px train step: {step['img_per_s']:.1f} img/s (batch 32); "
                  f"pipeline/step = {ratio:.1f}x", flush=True)
            results["pipeline_over_step"] = round(ratio, 2)
            train = {}
            for n in (small, 0):
                r = run_train(folder, tmp / "runs", n or None, args.steps, 32)
                train[str(n or args.images)] = r
                print(f"(b) sila-train {n or args.images:6d} images, {args.steps} steps: peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB, {r['wall_s']}s", flush=True)
            results["train"] = train
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
