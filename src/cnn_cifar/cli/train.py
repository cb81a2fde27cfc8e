"""train_cli: train a model on CIFAR-10/100 with per-model tuned defaults."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import nn
from ..models import build_model, list_models
from . import common as C

# Per-model defaults, used only for options the user did not give (None in the parser).
MODEL_DEFAULTS: dict[str, dict] = {
    "cnn": dict(optimizer="sgd", lr=0.02, momentum=0.9, nesterov=False, weight_decay=5e-4, batch_size=64,
                epochs=200, lr_schedule="cosine", warmup_epochs=10.0, min_lr=0.0,
                dropout_schedule="linear_decay", dropout_rate=0.6, min_dropout=0.2, max_dropout=0.7),
    "resnet": dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128,
                   epochs=200, lr_schedule="cosine", warmup_epochs=1.0, min_lr=0.0,
                   dropout_schedule="none", dropout_rate=0.0, min_dropout=0.0, max_dropout=0.5),
}
COMMON_DEFAULTS: dict = dict(model="cnn", dataset="cifar10", data="data", seed=0, beta1=0.9, beta2=0.999,
                             lr_decay_factor=0.1, lr_decay_steps=None, label_smoothing=0.0, crop_padding=4,
                             cutout=0, checkpoint_dir="checkpoint", log_dir="log")
# Settings that describe the run (restored from a checkpoint on --resume unless given again).
RUN_KEYS = list(MODEL_DEFAULTS["cnn"]) + [k for k in COMMON_DEFAULTS if k not in ("checkpoint_dir", "log_dir")] + \
    ["no_augment", "no_flip", "limit_train", "limit_test"]


def family(model: str) -> str:
    return "cnn" if model == "cnn" else "resnet"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cli.py", description="Train a CNN on CIFAR-10/100 (from-scratch NumPy/CuPy library). "
        "Options left out take the model's tuned defaults, printed at start.",
        formatter_class=argparse.HelpFormatter)
    g = p.add_argument_group("model and run")
    g.add_argument("--model", choices=list_models(), default=None, help="architecture [default: cnn]")
    g.add_argument("--epochs", type=C.positive_int, default=None, help="total epochs (cnn/resnet: 200)")
    g.add_argument("--batch-size", type=C.positive_int, default=None, help="batch size (cnn 64, resnet 128)")
    g.add_argument("--seed", type=C.nonneg_int, default=None, help="seed for weights, shuffling, augmentation "
                   "and dropout [default: 0]")
    C.add_backend_arg(g)

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="[default: sgd]")
    g.add_argument("--lr", type=C.positive_float, default=None, help="peak learning rate (cnn 0.02, resnet 0.1)")
    g.add_argument("--momentum", type=C.nonneg_float, default=None, help="SGD momentum [0.9]")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (cnn off, resnet on)")
    g.add_argument("--weight-decay", type=C.nonneg_float, default=None,
                   help="L2 weight decay added to the gradient, as torch.optim [5e-4]")
    g.add_argument("--beta1", type=C.probability, default=None, help="Adam beta1 [0.9]")
    g.add_argument("--beta2", type=C.probability, default=None, help="Adam beta2 [0.999]")
    g.add_argument("--label-smoothing", type=C.probability, default=None, help="label smoothing [0]")

    g = p.add_argument_group("learning-rate scheduling")
    g.add_argument("--lr-schedule", choices=["none", "cosine", "linear", "step"], default=None,
                   help="decay after warmup, evaluated every step [cosine]")
    g.add_argument("--warmup-epochs", type=C.nonneg_float, default=None,
                   help="linear warmup from 0 (cnn 10, resnet 1)")
    g.add_argument("--min-lr", type=C.nonneg_float, default=None, help="floor of the decay [0]")
    g.add_argument("--lr-decay-factor", type=C.unit_interval_open, default=None,
                   help="step schedule: multiply by this at each decay [0.1]")
    g.add_argument("--lr-decay-steps", type=C.positive_float, default=None,
                   help="step schedule: epochs between decays [auto: a third of the post-warmup run]")

    g = p.add_argument_group("dynamic dropout")
    g.add_argument("--dropout-schedule", choices=["none", "linear_decay", "cosine_decay", "adaptive"], default=None,
                   help="how the dropout rate changes by epoch (cnn linear_decay, resnet none)")
    g.add_argument("--dropout-rate", type=C.probability, default=None, help="initial rate (cnn 0.6, resnet 0)")
    g.add_argument("--min-dropout", type=C.probability, default=None, help="final/lowest rate (cnn 0.2)")
    g.add_argument("--max-dropout", type=C.probability, default=None, help="adaptive: highest rate (cnn 0.7)")

    g = p.add_argument_group("data and augmentation")
    g.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None, help="[default: cifar10]")
    g.add_argument("--data", default=None, help="folder holding cifar-10-batches-py / cifar-100-python [data]")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    g.add_argument("--no-augment", action="store_true", default=None, help="no crop/flip/cutout")
    g.add_argument("--crop-padding", type=C.nonneg_int, default=None, help="random-crop padding [4]")
    g.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips")
    g.add_argument("--cutout", type=C.nonneg_int, default=None, help="cutout square size, 0 = off [0]")
    g.add_argument("--no-prefetch", action="store_true", help="build batches in the main thread")

    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir", default=None, help="where <model>_best/_last.pkl and history go [checkpoint]")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue a run from a checkpoint (its settings apply unless given again)")
    g.add_argument("--log-dir", default=None, help="per-epoch log <log-dir>/<model>.log [log]")
    g.add_argument("--plot", action="store_true", help="refresh viz/<model>/<model>_training_progress.png each epoch")
    g.add_argument("--quiet", action="store_true", help="no progress bars or settings table")

    g = p.add_argument_group("advanced")
    g.add_argument("--limit-train", type=C.positive_int, default=None, help="use only the first N training images")
    g.add_argument("--limit-test", type=C.positive_int, default=None, help="use only the first N test images")
    return p


def resolve(args: argparse.Namespace, saved: dict | None = None) -> dict:
    """Effective settings: what the user gave, else the checkpoint's, else the model's, else common defaults."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    model = given.get("model") or (saved or {}).get("model") or COMMON_DEFAULTS["model"]
    eff = dict(COMMON_DEFAULTS)
    eff.update(MODEL_DEFAULTS[family(model)])
    eff.update({"no_augment": False, "no_flip": False, "limit_train": None, "limit_test": None})
    if saved:
        eff.update({k: saved[k] for k in RUN_KEYS if k in saved})
    eff.update(given)
    eff["model"] = model
    return eff


def print_settings(eff: dict) -> None:
    keys = [k for k in eff if k not in ("quiet", "plot", "no_prefetch", "no_download")]
    width = max(len(k) for k in keys)
    print("effective settings:")
    for k in keys:
        print(f"  {k.replace('_', '-'):<{width}}  {eff[k]}")


def _main(argv: list[str] | None = None) -> int:
    from ..data import AugmentConfig, BatchLoader, load_dataset
    from ..optim import SGD, Adam, DropoutSchedule, LRSchedule
    from ..training import CheckpointError, Trainer, interrupt_guard, load_checkpoint

    parser = build_parser()
    args = parser.parse_args(argv)
    ck = None
    if args.resume:
        ck = load_checkpoint(args.resume, expected_model=args.model)
    eff = resolve(args, (ck or {}).get("args"))
    if eff["min_dropout"] > eff["max_dropout"]:
        parser.error(f"--min-dropout {eff['min_dropout']} is above --max-dropout {eff['max_dropout']}")
    if eff["min_lr"] > eff["lr"]:
        parser.error(f"--min-lr {eff['min_lr']} is above --lr {eff['lr']}")
    quiet = bool(args.quiet)
    C.select_backend(eff["backend"], quiet=False)
    if not quiet:
        print_settings(eff)

    ds = load_dataset(eff["dataset"], eff["data"], download=not args.no_download, progress=not quiet)
    x_tr, y_tr = ds.x_train[:eff["limit_train"]], ds.y_train[:eff["limit_train"]]
    x_te, y_te = ds.x_test[:eff["limit_test"]], ds.y_test[:eff["limit_test"]]
    if len(x_tr) < 2:
        raise ValueError(f"need at least 2 training images, have {len(x_tr)}")
    name, num_classes = eff["model"], ds.spec.num_classes
    if ck is not None and ck.get("model_config", {}).get("num_classes", num_classes) != num_classes:
        raise CheckpointError(f"{args.resume} was trained with {ck['model_config']['num_classes']} classes, "
                              f"{eff['dataset']} has {num_classes}")

    model = build_model(name, num_classes=num_classes, dropout=eff["dropout_rate"], seed=eff["seed"])
    if eff["optimizer"] == "sgd":
        opt = SGD(model.parameters(), eff["lr"], eff["momentum"], bool(eff["nesterov"]) and eff["momentum"] > 0,
                  eff["weight_decay"])
    else:
        opt = Adam(model.parameters(), eff["lr"], (eff["beta1"], eff["beta2"]), weight_decay=eff["weight_decay"])
    lr_sched = LRSchedule(eff["lr_schedule"], eff["lr"], eff["epochs"], eff["warmup_epochs"], eff["min_lr"],
                          eff["lr_decay_factor"], eff["lr_decay_steps"])
    drop_sched = DropoutSchedule(eff["dropout_schedule"], eff["dropout_rate"], eff["min_dropout"],
                                 eff["max_dropout"], eff["epochs"])
    nn.random.manual_seed(eff["seed"] + 1)
    aug = AugmentConfig.none() if eff["no_augment"] else AugmentConfig(
        eff["crop_padding"], not eff["no_flip"], eff["cutout"])
    bs = min(eff["batch_size"], len(x_tr))
    train_loader = BatchLoader(x_tr, y_tr, bs, ds.spec.mean, ds.spec.std, shuffle=True,
                               augment_cfg=aug, rng=np.random.default_rng(eff["seed"]), drop_last=True,
                               prefetch=not args.no_prefetch)
    test_loader = BatchLoader(x_te, y_te, max(bs, 500), ds.spec.mean, ds.spec.std, prefetch=not args.no_prefetch)

    callbacks = []
    if args.plot:
        from ..viz import plot_training_progress

        def _plot(tr: Trainer) -> None:
            plot_training_progress(tr.history, Path("viz") / name, name)
        callbacks.append(_plot)
    run_args = {k: eff[k] for k in RUN_KEYS if k in eff}
    run_args["backend"] = eff["backend"]
    trainer = Trainer(model, name, opt, lr_sched, drop_sched, nn.SoftmaxCrossEntropy(eff["label_smoothing"]),
                      train_loader, test_loader, num_classes, eff["checkpoint_dir"],
                      Path(eff["log_dir"]) / f"{name}.log",
                      run_info={"args": run_args, "dataset": eff["dataset"], "classes": ds.classes},
                      quiet=quiet, on_epoch_end=callbacks)
    if ck is not None:
        trainer.restore(ck)
        print(f"resumed from {args.resume}: {trainer.epoch} epoch(s) done"
              + (f", {trainer.step} step(s) into epoch {trainer.epoch + 1}" if trainer.step else ""))
        if trainer.epoch >= eff["epochs"]:
            print(f"nothing to do: the checkpoint already has {trainer.epoch} of {eff['epochs']} epochs "
                  f"(give a larger --epochs to continue)")
            return 0
    print(f"training {name} ({model.num_parameters():,} parameters) on {eff['dataset']}: {len(x_tr)} train / "
          f"{len(x_te)} test images, {len(train_loader)} steps per epoch", flush=True)
    with interrupt_guard(trainer.stop):
        trainer.fit(eff["epochs"])
    print(f"done: best test accuracy {100 * trainer.best_accuracy:.2f}% -> {trainer.best_path}; "
          f"last -> {trainer.last_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
