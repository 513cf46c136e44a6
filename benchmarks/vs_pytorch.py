"""Training speed of our Keras SiLa model vs the same network in PyTorch eager (not a test).

The paper's code is PyTorch; this measures training images/s of the *same* SilaNet
(backbone + aux heads + SiLa loss + SGD with momentum and coupled weight decay), same
batch, same CPU thread count, alternating short timed blocks of each framework in one
process so machine load hits both alike. Keras runs as ``sila-train`` compiles it
(``compile_model``: per-head metrics included), with and without XLA ``--jit``; PyTorch
is a plain eager loop (loss only, ``model.train()``). Blocks are separated by a short
pause (so one framework's idle threads do not spin into the other's block) and their order
flips every round. Reported: median img/s and the median per-round ratio Keras / PyTorch
(goal ≥ 1.0).

PyTorch is a benchmark-only dependency: ``pip install torch==2.13.0`` (CPU build).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here: PyTorch's OpenMP threads otherwise
spin at every barrier, and on a shared (oversubscribed) CPU that made PyTorch 8× slower
with 2 threads (5 vs 40 img/s on resnet20) — a measurement artefact, not its real speed.
Set ``OMP_WAIT_POLICY=ACTIVE`` yourself on a dedicated machine to measure the other way.

PyTorch always uses oneDNN for convolutions; on Linux TensorFlow turns its oneDNN kernels
on by default only on CPUs with AVX512_VNNI/AVX512_BF16/AVX_VNNI/AMX. On others (e.g. an
AVX2-only EPYC) run once more with ``TF_ENABLE_ONEDNN_OPTS=1`` set, which must happen
before TensorFlow is imported.

    python benchmarks/vs_pytorch.py [--models resnet20,vgg19] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads

import numpy as np  # noqa: E402

VGG19 = [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]


# --------------------------------------------------------------------------- PyTorch twins


def torch_sila_model(name: str, num_classes: int = 10, heads: int = 3):
    """The SilaNet ``name`` (resnet20 or vgg19) in PyTorch, mirroring sila_keras layer for
    layer: normalization, backbone, aux heads (3×3 conv to N + GAP at the taps, deepest
    first) and the concatenated ``sila_logits``."""
    import torch
    from torch import nn

    class Shortcut(nn.Module):  # option A: subsample + zero-pad channels
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            x = x[:, :, ::self.stride, ::self.stride]
            lo = self.extra // 2
            return nn.functional.pad(x, (0, 0, 0, 0, lo, self.extra - lo))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
            self.short = Shortcut(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.short(x) + self.b2(self.c2(y)))

    def cbr(cin, cout, bias):
        return [nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class SilaNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.5))
            self.register_buffer("std", torch.full((1, 3, 1, 1), 63.75))
            self.stages = nn.ModuleList()
            if name == "resnet20":
                widths, cin = (16, 32, 64), 16
                self.stem = nn.Sequential(*cbr(3, 16, bias=False))
                for s, w in enumerate(widths):
                    blocks = [Block(cin if b == 0 else w, w, 2 if (b == 0 and s > 0) else 1)
                              for b in range(3)]
                    self.stages.append(nn.Sequential(*blocks))
                    cin = w
                self.classifier = nn.Linear(64, num_classes)
                tap_channels = list(widths[:-1])
            elif name == "vgg19":
                self.stem, cin = nn.Identity(), 3
                for filters in VGG19:
                    mods = [m for f_in, f in zip([cin, *filters[:-1]], filters) for m in cbr(f_in, f, True)]
                    self.stages.append(nn.Sequential(*mods))
                    cin = filters[-1]
                self.pool = nn.MaxPool2d(2)
                self.classifier = nn.Sequential(
                    nn.Linear(512, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                    nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                    nn.Linear(4096, num_classes))
                tap_channels = [f[-1] for f in VGG19[:-1]]
            else:
                raise ValueError(f"No PyTorch twin for '{name}'. Available: resnet20, vgg19")
            # heads 2..M on the taps, deepest first (sila_keras.core.heads.place_heads)
            self.tap_ids = list(reversed(range(len(tap_channels))))[: heads - 1]
            self.aux = nn.ModuleList(nn.Conv2d(tap_channels[t], num_classes, 3, 1, 1) for t in self.tap_ids)

        def forward(self, x):
            x = self.stem((x - self.mean) / self.std)
            taps = []
            for s, stage in enumerate(self.stages):
                x = stage(x)
                if s < len(self.stages) - 1:
                    taps.append(x)
                if name == "vgg19":
                    x = self.pool(x)
            logits = [self.classifier(x.mean((2, 3)))]
            logits += [conv(taps[t]).mean((2, 3)) for conv, t in zip(self.aux, self.tap_ids)]
            return torch.cat(logits, 1)

    return SilaNet()


def torch_sila_loss(logits, y, num_classes: int, weights):
    """SiLa loss (SilaNet Eq. 4): one M·N-way log-softmax, set k scored at y + k·N."""
    import torch

    logp = torch.log_softmax(logits, 1)
    loss = 0.0
    for k, w in enumerate(weights):
        loss = loss - w * logp.gather(1, (y + k * num_classes)[:, None]).squeeze(1)
    return loss.mean()


# --------------------------------------------------------------------------- runners


class TorchRunner:
    def __init__(self, name, x, y, heads, weights, lr=0.1):
        import torch

        self.torch = torch
        self.model = torch_sila_model(name, 10, heads).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        self.y = torch.from_numpy(y.astype(np.int64))
        self.weights = weights
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def steps(self, n):
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = torch_sila_loss(self.model(self.x), self.y, 10, self.weights)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


class KerasRunner:
    def __init__(self, name, x, y, heads, jit):
        import tensorflow as tf

        from sila_keras import build_sila_model
        from sila_keras.core.heads import trainable_params
        from sila_keras.training.config import TrainConfig
        from sila_keras.training.train import compile_model

        self.model = build_sila_model(name, 10, heads)
        compile_model(self.model, TrainConfig.create("bench", name, heads=heads, milestones=(), jit=jit), 10, 1)
        self.x, self.y = tf.constant(x), tf.constant(y.astype(np.int32))
        self.params = trainable_params(self.model)

    def steps(self, n):
        for _ in range(n):
            loss = self.model.train_on_batch(self.x, self.y, return_dict=False)
        return float(np.asarray(loss).ravel()[0])


def timed(runner, steps, settle_s: float = 0.3):
    """Seconds for ``steps`` steps, after letting the other framework's threads go idle."""
    time.sleep(settle_s)
    t = time.perf_counter()
    runner.steps(steps)
    return time.perf_counter() - t


def compare(name: str, batch: int, heads: int, rounds: int, steps: int, jit: bool) -> dict:
    """Alternate timed blocks of Keras (plain, then XLA if ``jit``) and PyTorch."""
    from sila_keras.core.losses import set_weights

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    runners = {"keras": KerasRunner(name, x, y, heads, jit=False),
               "torch": TorchRunner(name, x, y, heads, set_weights(heads))}
    if jit:
        runners["keras_jit"] = KerasRunner(name, x, y, heads, jit=True)
    if runners["keras"].params != runners["torch"].params:
        raise RuntimeError(f"{name}: Keras has {runners['keras'].params:,} trainable params, the "
                           f"PyTorch twin {runners['torch'].params:,}: not the same network")
    for r in runners.values():
        r.steps(2)  # trace / compile / warm up
    times = {k: [] for k in runners}
    order = list(runners)
    for i in range(rounds):  # the order flips every round: no framework always goes first
        for k in (order if i % 2 == 0 else order[::-1]):
            times[k].append(timed(runners[k], steps))
    out = {"model": name, "batch": batch, "heads": heads, "params": runners["torch"].params}
    for k, ts in times.items():
        out[f"{k}_img_s"] = batch * steps / statistics.median(ts)
    for k in runners:
        if k != "torch":  # per-round ratios, median (robust to load swings between rounds)
            out[f"{k}_vs_torch"] = statistics.median(t / s for s, t in zip(times[k], times["torch"]))
    return out


def set_threads(threads: int) -> None:
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,vgg19", help="comma-separated: resnet20, vgg19")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--no-jit", action="store_true", help="skip the XLA (--jit) Keras variant")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("vs_pytorch: error: PyTorch is not installed (benchmark-only dependency). "
              "Install it with: pip install torch==2.13.0", file=sys.stderr)
        return 2
    import tensorflow as tf

    set_threads(args.threads)
    print(f"TensorFlow {tf.__version__}, PyTorch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch_size}, {args.heads} heads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<10}{'keras img/s':>13}{'xla img/s':>11}{'torch img/s':>13}"
          f"{'keras/torch':>13}{'xla/torch':>11}")
    results = []
    for name in args.models.split(","):
        r = compare(name, args.batch_size, args.heads, args.rounds, args.steps, not args.no_jit)
        results.append(r)
        xla = f"{r['keras_jit_img_s']:>11.1f}" if "keras_jit_img_s" in r else f"{'-':>11}"
        xla_ratio = f"{r['keras_jit_vs_torch']:>11.2f}" if "keras_jit_vs_torch" in r else f"{'-':>11}"
        print(f"{name:<10}{r['keras_img_s']:>13.1f}{xla}{r['torch_img_s']:>13.1f}"
              f"{r['keras_vs_torch']:>13.2f}{xla_ratio}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
