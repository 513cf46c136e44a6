"""``head_vs_alone.py --diagnose``: why a head or a sub-network trains badly.

Trains, for the first seed, the SiLa model and each alone sub-network — plus two variants
of every alone sub-network: lr ÷ 5, and BatchNorm inserted before the head's 3×3 conv —
through the training chain of :mod:`sila_keras.training.train`, and after every epoch records on a
fixed probe batch of 256 training images:

* gradient norms of the head's own layers, of head 1's classifier and of the backbone (the
  gradient of the loss as compiled, in training mode);
* the scale of each head's logits (std over the batch and classes, inference mode);
* train accuracy (the probe, inference mode) and test accuracy in inference mode (BatchNorm
  moving statistics) and in training mode (batch statistics; the moving statistics are put
  back afterwards): a gap between the two points at BatchNorm statistics that do not fit.

Writes ``OUT/diagnose/<variant>.csv``, ``summary.md`` and ``curves.png``.
"""

from __future__ import annotations

import time

import numpy as np

from sila_keras.utils.rundir import StudyDir

PROBE = 256
TEST_PROBE = 1000


def _groups(model) -> dict[str, list]:
    """Trainable variables by part: ``head_k`` (k ≥ 2, or ``aux`` of a sub-network),
    ``classifier`` (head 1's dense layer) and ``backbone``."""
    out: dict[str, list] = {}
    for v in model.trainable_variables:
        layer = v.path.split("/")[-2] if "/" in v.path else v.path
        if layer.startswith("head_") and layer[5:6].isdigit():
            key = "_".join(layer.split("_")[:2])
        elif layer.startswith("aux"):
            key = "head"
        elif layer.startswith("classifier"):
            key = "classifier"
        else:
            key = "backbone"
        out.setdefault(key, []).append(v)
    return out


def _batches(ds, limit: int, seed: int = 0):
    """``limit`` images drawn at random from the whole of ``ds`` (the sets are stored class
    by class, so the first images would be one class)."""
    xs, ys = [], []
    for batch in ds:
        xs.append(batch[0].numpy())
        ys.append(batch[1].numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    pick = np.random.default_rng(seed).permutation(len(y))[:limit]
    return x[pick], y[pick]


def _predict(model, x, training: bool = False, batch: int = 250):
    return np.concatenate([np.asarray(model(x[i:i + batch], training=training))
                           for i in range(0, len(x), batch)])


def make_callback(model, probe, test, num_classes: int):
    import keras
    import tensorflow as tf

    from sila_keras.core.heads import num_heads_of

    m = num_heads_of(model)
    groups = _groups(model)

    def accuracy(logits, y):
        blocks = np.asarray(logits).reshape(len(y), m, num_classes)
        return [float((blocks[:, k].argmax(-1) == y).mean()) for k in range(m)]

    class Diagnose(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_end(self, epoch, logs=None):
            x, y = probe
            saved = [v.numpy() for v in model.non_trainable_variables]
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(model.loss(y, logits))
            grads = tape.gradient(loss, [v for vs in groups.values() for v in vs])
            test_train_mode = _predict(model, test[0], training=True)
            for v, value in zip(model.non_trainable_variables, saved):
                v.assign(value)  # training-mode calls moved the BN statistics: put them back
            it = iter(grads)
            row = {"epoch": epoch + 1, "lr": float(np.asarray(model.optimizer.learning_rate)),
                   "probe_loss": float(loss)}
            for key, vs in groups.items():
                g = [next(it) for _ in vs]
                row[f"grad_{key}"] = float(np.sqrt(sum(float(tf.reduce_sum(t * t)) for t in g)))
                row[f"weight_{key}"] = float(np.sqrt(sum(float(tf.reduce_sum(v * v)) for v in vs)))
            eval_logits = _predict(model, x)
            test_logits = _predict(model, test[0])
            blocks = np.asarray(test_logits).reshape(len(test[1]), m, num_classes)
            for k, (tr, te, tt) in enumerate(zip(accuracy(eval_logits, y), accuracy(test_logits, test[1]),
                                                 accuracy(test_train_mode, test[1])), start=1):
                row[f"h{k}_train_acc"], row[f"h{k}_test_acc"], row[f"h{k}_test_acc_bn_batch"] = tr, te, tt
                row[f"h{k}_logit_std"] = float(blocks[:, k - 1].std())
            self.rows.append(row)
            print("  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)

    return Diagnose()


def bn_variant(path_in, path_out):
    """The alone sub-network with BatchNorm (no ReLU: its input is a ReLU output) before
    the head's conv; weights of the new layers fresh, the rest as saved. None when the
    module already starts with BN (pre-activation backbones)."""
    import keras

    from sila_keras.utils.rundir import save_model

    sub = keras.models.load_model(path_in, compile=False)
    if any(layer.name == "aux_bn" for layer in sub.layers):
        return None
    conv = sub.get_layer("aux_conv")
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="aux_bn")(conv.input)
    x = keras.layers.Conv2D.from_config({**conv.get_config(), "name": "aux_conv2"})(x)
    x = keras.layers.GlobalAveragePooling2D(name="aux_logits2")(x)
    save_model(keras.Model(sub.input, x, name=f"{sub.name}_bn"), path_out)
    return path_out


def diagnose(args, s: dict) -> None:
    """Train the variants for the first seed and write ``OUT/diagnose/``."""
    from head_vs_alone import write_subnetwork

    from sila_keras.training.config import TrainConfig
    from sila_keras.utils import files

    seed = s["seeds"][0]
    out = StudyDir(args.out) / StudyDir.DIAGNOSE
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig.create(args.dataset, args.model, heads=s["heads"], beta=s["beta"], lam=s["lam"],
                       epochs=s["epochs"], lr=s["lr"], gamma=s["gamma"],
                       milestones=tuple(int(v) for v in s["milestones"].split(",") if v.strip()),
                       batch_size=s["batch_size"], limit_train=s["limit_train"],
                       limit_test=s["limit_test"], seed=seed, verbose=0)
    variants = {"sila": base}
    for k in s["alone_heads"]:
        path = write_subnetwork(args, s, k, seed)
        alone = base.replace(model=str(path.resolve()), heads=1)
        variants[f"alone_h{k}"] = alone
        variants[f"alone_h{k}_lr÷5"] = alone.replace(lr=s["lr"] / 5)
        bn = bn_variant(path, out / f"head_{k}-s{seed}-bn.keras")
        if bn is not None:  # pre-activation backbones' modules already start with BN + ReLU
            variants[f"alone_h{k}_bn"] = alone.replace(model=str(bn.resolve()))
    summary = []
    for name, config in variants.items():
        rows = train_variant(name, config, seed)
        files.write_csv(out / f"{name}.csv", rows)
        last = rows[-1]
        heads = sorted({int(k[1:].split("_")[0]) for k in last if k.startswith("h")})
        for k in heads:
            gkey = "grad_classifier" if k == 1 and name == "sila" else (
                f"grad_head_{k}" if name == "sila" else "grad_head")
            summary.append({
                "variant": name, "head": k if name == "sila" else int(name.split("_h")[1][0]),
                "test_acc": last[f"h{k}_test_acc"], "test_acc_bn_batch": last[f"h{k}_test_acc_bn_batch"],
                "train_acc": last[f"h{k}_train_acc"],
                "test_acc_spread_last3": float(np.ptp([r[f"h{k}_test_acc"] for r in rows[-3:]])),
                "max_grad_head": max(r.get(gkey, 0.0) for r in rows),
                "max_grad_backbone": max(r["grad_backbone"] for r in rows),
                "logit_std": last[f"h{k}_logit_std"]})
    files.write_csv(out / "summary.csv", summary)
    lines = ["| variant | head | test acc | test acc (BN batch stats) | train acc | "
             "spread last 3 ep | max ‖g‖ head | max ‖g‖ backbone | logit std |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        lines.append(f"| {r['variant']} | {r['head']} | {100 * r['test_acc']:.2f} | "
                     f"{100 * r['test_acc_bn_batch']:.2f} | {100 * r['train_acc']:.2f} | "
                     f"{100 * r['test_acc_spread_last3']:.2f} | {r['max_grad_head']:.3g} | "
                     f"{r['max_grad_backbone']:.3g} | {r['logit_std']:.3g} |")
    files.write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def train_variant(name, config, seed):
    import keras

    from sila_keras.data.pipeline import eval_dataset
    from sila_keras.training.train import build_model, compile_model, fit, load_data, make_datasets

    keras.utils.set_random_seed(seed)
    data = load_data(config)
    train_ds, eval_ds, steps = make_datasets(config, data.train, None, data.test, None)
    model = compile_model(build_model(config, data), config, data.num_classes, steps)
    probe = _batches(eval_dataset(data.train, None, PROBE), PROBE)
    test = _batches(eval_dataset(data.test, None, 250), TEST_PROBE)
    cb = make_callback(model, probe, test, data.num_classes)
    print(f"[diagnose {name}] {config.net.model} heads={config.sila.heads} lr={config.optim.lr}", flush=True)
    t = time.time()
    fit(model, train_ds, eval_ds, epochs=config.optim.epochs, steps=steps, callbacks=[cb], verbose=0)
    print(f"[diagnose {name}] {time.time() - t:.0f} s", flush=True)
    keras.backend.clear_session()
    return cb.rows
