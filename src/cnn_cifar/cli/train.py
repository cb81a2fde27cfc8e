"""train_cli: train a model on CIFAR-10/100 with per-model tuned defaults (the registry's recipes)."""
from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from .. import backend, nn
from ..data import BatchLoader, get_spec, load_dataset
from ..data.loader import CUTOUT_FILLS, SSR_BORDERS
from ..models import build_model, list_models, options_of, recipe
from ..nn.residual import SHORTCUTS
from ..optim import DROPOUT_SCHEDULES, LR_SCHEDULES, OPTIMIZERS
from ..training import (CheckpointError, RunConfig, Trainer, interrupt_guard, load_checkpoint, resolve,
                        transfer_weights)
from ..training.mixing import MixedCrossEntropy
from ..distributed import DataParallel
from . import common as C
from . import parallel
from .config_file import ConfigFileError, config_argv, write_config


def _names(names: list[str]) -> str:
    """['cnn', 'resnet8', 'resnet14'] -> 'cnn/resnet8/14' (a family's numbered names share their prefix)."""
    out: list[str] = []
    last = None
    for n in names:
        m = re.fullmatch(r"([a-z_-]+)(\d+)", n)
        if m and m[1] == last:
            out.append(m[2])
        else:
            out.append(n)
        last = m[1] if m else None
    return "/".join(out)


def per_model(field: str) -> str:
    """The registered recipes' values of ``field``, grouped by value, for a flag's help text."""
    groups: dict = {}
    for name in list_models():
        groups.setdefault(getattr(recipe(name), field), []).append(name)
    if len(groups) == 1:
        return f"[{next(iter(groups))}]"
    return "[" + "; ".join(f"{_names(ns)}: {v}" for v, ns in groups.items()) + "]"


class HelpFormatter(argparse.HelpFormatter):
    """Writes the --model help (every model with its parameter count, which means building each) only when
    help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "model":
            return "architecture [default: cnn]; parameters for 10 classes: " + ", ".join(
                f"{n} {build_model(n).num_parameters():,}" for n in list_models())
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cli.py", description="Train a CNN on CIFAR-10/100 (from-scratch NumPy/CuPy library). "
        "Options left out take the model's tuned defaults, printed at start.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("model and run")
    g.add_argument("--model", choices=list_models(), default=None, help="architecture [default: cnn]")
    g.add_argument("--epochs", type=C.positive_int, default=None, help=f"total epochs {per_model('epochs')}")
    g.add_argument("--batch-size", type=C.positive_int, default=None, help=f"batch size {per_model('batch_size')}")
    g.add_argument("--seed", type=C.nonneg_int, default=None, help="seed for weights, shuffling, augmentation "
                   "and dropout [default: 0]")
    g.add_argument("--shortcut", choices=SHORTCUTS, default=None,
                   help="ResNets: 1x1-conv 'projection' shortcuts (default) or the paper's parameter-free 'pad' "
                        "(option A)")
    C.add_backend_arg(g)

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=per_model("optimizer"))
    g.add_argument("--lr", type=C.positive_float, default=None, help=f"peak learning rate {per_model('lr')}")
    g.add_argument("--momentum", type=C.nonneg_float, default=None, help=f"SGD momentum {per_model('momentum')}")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Nesterov momentum {per_model('nesterov')}")
    g.add_argument("--weight-decay", type=C.nonneg_float, default=None,
                   help="L2 weight decay added to the gradient, as torch.optim; with adamw decoupled "
                   f"(p *= 1 - lr*wd), default 0.01 as torch.optim.AdamW {per_model('weight_decay')}")
    g.add_argument("--beta1", type=C.probability, default=None, help="Adam beta1 [0.9]")
    g.add_argument("--beta2", type=C.probability, default=None, help="Adam beta2 [0.999]")
    g.add_argument("--label-smoothing", type=C.probability, default=None, help="label smoothing [0]")
    g.add_argument("--clip-grad-norm", type=C.nonneg_float, default=None, metavar="MAX",
                   help="clip the global L2 norm of all gradients to MAX before each update, as "
                   "torch.nn.utils.clip_grad_norm_; 0 = off [0]")
    g.add_argument("--ema", type=C.probability, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights and BN statistics (e.g. 0.999), "
                   "evaluate it each epoch and save it as the checkpoints' weights; 0 = off [0]")

    g = p.add_argument_group("learning-rate scheduling")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="decay after warmup, evaluated every step; onecycle = OneCycleLR (its own warm-up), plateau = "
                   f"ReduceLROnPlateau on the test loss {per_model('lr_schedule')}")
    g.add_argument("--warmup-epochs", type=C.nonneg_float, default=None,
                   help=f"linear warmup from 0 {per_model('warmup_epochs')}")
    g.add_argument("--min-lr", type=C.nonneg_float, default=None, help=f"floor of the decay {per_model('min_lr')}")
    g.add_argument("--lr-decay-factor", type=C.unit_interval_open, default=None,
                   help="step schedule: multiply by this at each decay [0.1]")
    g.add_argument("--lr-decay-steps", type=C.positive_float, nargs="+", default=None, metavar="E",
                   help="step schedule: one value = epochs between decays after warmup; several = the epochs "
                   "to decay at, as MultiStepLR milestones [auto: every third of the post-warmup run]")
    g.add_argument("--max-lr", type=C.positive_float, default=None,
                   help="onecycle: peak learning rate, at least --lr [--lr]")
    g.add_argument("--pct-start", type=C.open_unit_interval, default=None,
                   help="onecycle: fraction of the run spent rising to --max-lr [0.3]")
    g.add_argument("--plateau-factor", type=C.open_unit_interval, default=None,
                   help="plateau: multiply the lr by this when the test loss stalls [0.1]")
    g.add_argument("--plateau-patience", type=C.nonneg_int, default=None,
                   help="plateau: epochs without improvement of the test loss before a cut [2]")

    g = p.add_argument_group("dynamic dropout")
    g.add_argument("--dropout-schedule", choices=DROPOUT_SCHEDULES, default=None,
                   help=f"how the dropout rate changes by epoch {per_model('dropout_schedule')}")
    g.add_argument("--dropout-rate", type=C.probability, default=None, help=f"initial rate {per_model('dropout_rate')}")
    g.add_argument("--min-dropout", type=C.probability, default=None, help=f"final/lowest rate {per_model('min_dropout')}")
    g.add_argument("--max-dropout", type=C.probability, default=None, help=f"adaptive: highest rate {per_model('max_dropout')}")

    g = p.add_argument_group("data and augmentation")
    g.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None, help="[default: cifar10]")
    g.add_argument("--data", default=None, help="folder holding cifar-10-batches-py / cifar-100-python [data]")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    g.add_argument("--no-augment", action="store_true", default=None, help="no augmentation at all")
    g.add_argument("--crop-padding", type=C.nonneg_int, default=None, help="random-crop padding [4]")
    g.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips")
    g.add_argument("--cutout", type=C.nonneg_int, default=None, help="cutout square size, 0 = off [0]")
    g.add_argument("--cutout-fill", choices=CUTOUT_FILLS, default=None,
                   help="cutout fills with the dataset mean (0 after normalisation) or black [mean]")
    g.add_argument("--cutout-p", type=C.unit_interval_open, default=None, help="cutout probability per image [1]")
    g.add_argument("--shift-scale-rotate", type=C.nonneg_float, nargs=3, default=None,
                   metavar=("SHIFT", "SCALE", "DEGREES"), help="random affine per image as albumentations' "
                   "ShiftScaleRotate: shift up to SHIFT of the size, scale in 1 +- SCALE, rotate up to DEGREES "
                   "(e.g. 0.0625 0.1 15); bilinear [off]")
    g.add_argument("--ssr-p", type=C.unit_interval_open, default=None,
                   help="shift-scale-rotate probability per image [0.5]")
    g.add_argument("--ssr-border", choices=SSR_BORDERS, default=None,
                   help="shift-scale-rotate border: mirror (OpenCV's REFLECT_101) or black [reflect]")
    g.add_argument("--color-jitter", type=C.nonneg_float, nargs=4, default=None, metavar=("B", "C", "S", "H"),
                   help="torchvision ColorJitter(brightness, contrast, saturation, hue) per image, in a random "
                   "order (e.g. 0.2 0.2 0.2 0.02) [off]")
    g.add_argument("--mixup", type=C.nonneg_float, default=None, metavar="ALPHA",
                   help="mixup with lam ~ Beta(ALPHA, ALPHA) per batch; 0 = off [0]")
    g.add_argument("--cutmix", type=C.nonneg_float, default=None, metavar="ALPHA",
                   help="cutmix with lam ~ Beta(ALPHA, ALPHA) per batch (with --mixup: either, 1/2 each); 0 = off [0]")
    g.add_argument("--show-augment", type=C.positive_int, default=None, metavar="N",
                   help="write a grid of N augmented training images to viz/<model>/<model>_augment.png and exit")
    g.add_argument("--no-prefetch", action="store_true", help="build batches in the main thread")

    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir", default=None, help="where <model>_best/_last.pkl and history go [checkpoint]")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue a run from a checkpoint (its settings apply unless given again)")
    g.add_argument("--init-from", metavar="CKPT", default=None,
                   help="start a new run from a checkpoint's weights (fresh optimizer and schedule; the "
                        "classifier is re-initialised if the class count differs)")
    g.add_argument("--log-dir", default=None, help="per-epoch log <log-dir>/<model>.log [log]")
    g.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard scalars here (needs tensorboardX: uv sync --group tensorboard)")
    g.add_argument("--tensorboard-every", type=C.nonneg_int, default=None, metavar="N",
                   help="with --tensorboard, also log the batch loss and lr every N steps; 0 = per epoch only [50]")
    g.add_argument("--plot", action="store_true", help="refresh viz/<model>/<model>_training_progress.png each epoch")
    g.add_argument("--quiet", action="store_true", help="no progress bars or settings table")
    g.add_argument("--summary", action="store_true", help="print the model as a table (layers, output shapes, "
                   "parameters, multiply-adds) and exit")

    g.add_argument("--save-every", type=C.nonneg_int, default=None, metavar="N",
                   help="also keep <model>_epoch<N>.pkl every N epochs; 0 = off [0]")
    g.add_argument("--early-stop", type=C.nonneg_int, default=None, metavar="PATIENCE",
                   help="stop when test accuracy has not improved for PATIENCE epochs; 0 = off [0]")
    g.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read settings from a TOML file (keys: any flag's name, e.g. lr-schedule = \"onecycle\"); "
                   "flags given on the command line win")
    g.add_argument("--dump-config", metavar="FILE.toml", default=None,
                   help="write the effective settings to a TOML file (for --config) and exit")

    g = p.add_argument_group("advanced")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: needs the CuPy backend and is not implemented yet; says so and trains "
                   "in float32")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks mpirun/srun started (uv sync --group distributed); "
                   "--batch-size stays the global batch, split evenly over the ranks")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch-norm statistics over the whole global batch (SyncBatchNorm) "
                   "instead of each rank's shard")
    g.add_argument("--limit-train", type=C.positive_int, default=None, help="use only the first N training images")
    g.add_argument("--limit-test", type=C.positive_int, default=None, help="use only the first N test images")
    return p


def print_settings(cfg: RunConfig) -> None:
    settings = cfg.to_dict()
    width = max(len(k) for k in settings)
    print("effective settings:")
    for k, v in settings.items():
        if isinstance(v, (list, tuple)):
            v = " ".join(f"{e:g}" if isinstance(e, float) else str(e) for e in v)
        print(f"  {k.replace('_', '-'):<{width}}  {v}")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, after the settings of its ``--config`` file (so the command line wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    if config:
        try:
            argv = config_argv(parser, config) + argv
        except ConfigFileError as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    C.active_comm = None
    if args.sync_bn and not args.distributed:
        parser.error("--sync-bn needs --distributed")
    if args.resume and args.init_from:
        parser.error("--resume continues a run, --init-from starts a new one from its weights: give one")
    ck = load_checkpoint(args.resume, expected_model=args.model) if args.resume else None
    src = load_checkpoint(args.init_from) if args.init_from else None
    if src is not None and args.model is None:
        args.model = src.model                                # the architecture the weights are for
    try:
        cfg = resolve(vars(args), ck.args if ck is not None else None)
    except ValueError as exc:
        parser.error(str(exc))
    quiet = bool(args.quiet)
    if cfg.tensorboard and not args.dump_config:
        from ..training.tensorboard import MISSING, tensorboard_available
        if not tensorboard_available():
            parser.error(MISSING)
    if args.dump_config:
        path = write_config(cfg.to_dict(), args.dump_config, "train_cli.py settings, written by --dump-config; "
                            "train with: train_cli.py --config FILE")
        print(f"wrote {path}")
        return 0
    if args.distributed:
        parallel.join(cfg.backend)
    C.select_backend(cfg.backend, quiet=False)
    if args.amp:
        print("--amp: mixed precision needs the CuPy backend; training in float32" if backend.name == "numpy" else
              "--amp: mixed precision is not implemented for CuPy yet; training in float32", flush=True)
    if not quiet:
        print_settings(cfg)

    if args.summary:
        from .summary import format_summary
        num_classes = ck.num_classes if ck is not None and ck.num_classes else get_spec(cfg.dataset).num_classes
        print(format_summary(build_model(cfg.model, num_classes=num_classes, dropout=cfg.dropout_rate, seed=cfg.seed,
                                         **({"shortcut": cfg.shortcut} if cfg.shortcut else {}))))
        return 0
    comm = parallel.communicator(args.distributed, args.sync_bn, cfg.batch_size)
    if comm.is_main:                                  # rank 0 downloads, the others wait and read
        ds = load_dataset(cfg.dataset, cfg.data, download=not args.no_download, progress=not quiet)
    comm.barrier()
    if not comm.is_main:
        ds = load_dataset(cfg.dataset, cfg.data, download=False, progress=False)
    x_tr, y_tr = ds.x_train[:cfg.limit_train], ds.y_train[:cfg.limit_train]
    x_te, y_te = ds.x_test[:cfg.limit_test], ds.y_test[:cfg.limit_test]
    if len(x_tr) < 2:
        raise ValueError(f"need at least 2 training images, have {len(x_tr)}")
    name, num_classes = cfg.model, ds.spec.num_classes
    if ck is not None and (ck.num_classes or num_classes) != num_classes:
        raise CheckpointError(f"{args.resume} was trained with {ck.num_classes} classes, "
                              f"{cfg.dataset} has {num_classes}")

    base = ck if ck is not None else src
    options = options_of(base.model_config) if base is not None else {}   # e.g. the shortcut it was built with
    if cfg.shortcut:
        options["shortcut"] = cfg.shortcut
    model = build_model(name, num_classes=num_classes, dropout=cfg.dropout_rate, seed=cfg.seed, **options)
    if src is not None:
        if src.model != name:
            raise CheckpointError(f"{args.init_from} holds a '{src.model}' model, not '{name}'")
        fresh = transfer_weights(model, src)
        print(f"initialised from {args.init_from}" + (
            f"; its {src.num_classes}-class head ({', '.join(fresh)}) re-initialised for {num_classes} classes"
            if fresh else ""), flush=True)
    nn.random.manual_seed(cfg.seed + 1)
    nn.random.set_rank(comm.rank)                     # each rank its own dropout masks
    if args.sync_bn:
        nn.convert_sync_batchnorm(model, comm)
    bs = min(cfg.batch_size, len(x_tr))
    if bs % comm.size:
        raise ValueError(f"--batch-size {bs} does not divide evenly over {comm.size} ranks")
    # Weights from a checkpoint keep the normalisation they were trained with; a new run uses the dataset's.
    mean, std = base.normalization(ds.spec.mean, ds.spec.std) if base is not None else (ds.spec.mean, ds.spec.std)
    train_loader = BatchLoader(x_tr, y_tr, bs, mean, std, shuffle=True, augment_cfg=cfg.augmentation(),
                               rng=np.random.default_rng(cfg.seed), drop_last=True, prefetch=not args.no_prefetch,
                               shard=(comm.rank, comm.size))
    part = parallel.test_part(len(x_te), comm)       # each rank evaluates its part; the counts are summed
    test_loader = BatchLoader(x_te[part], y_te[part], max(bs, 500), mean, std, prefetch=not args.no_prefetch)
    if args.show_augment:
        from ..viz import show_augment            # matplotlib is imported only when asked
        print(f"wrote {show_augment(train_loader, args.show_augment, ds.classes, name)}")
        return 0
    criterion = nn.SoftmaxCrossEntropy(cfg.label_smoothing)
    if cfg.augmentation().mixes:
        criterion = MixedCrossEntropy(criterion)
    hooks = cfg.run_hooks()
    if args.plot:
        from ..viz import PlotProgress        # matplotlib is imported only when plots are asked for
        hooks.append(PlotProgress(f"viz/{name}"))
    trainer = Trainer(model, name, cfg.build_optimizer(model.parameters()),
                      cfg.make_lr_schedule(steps_per_epoch=len(train_loader)), cfg.make_dropout_schedule(),
                      criterion, train_loader, test_loader, num_classes, cfg.checkpoint_dir, f"{cfg.log_dir}/{name}.log",
                      run_info={"args": cfg.run_settings(), "dataset": cfg.dataset, "classes": ds.classes},
                      quiet=quiet, hooks=hooks, clip_grad_norm=cfg.clip_grad_norm or None, ema=cfg.make_ema(model),
                      parallel=DataParallel(model, comm) if args.distributed else None)
    if ck is not None:
        trainer.restore(ck)
        print(f"resumed from {args.resume}: {trainer.epoch} epoch(s) done"
              + (f", {trainer.step} step(s) into epoch {trainer.epoch + 1}" if trainer.step else ""))
        if trainer.epoch >= cfg.epochs:
            print(f"nothing to do: the checkpoint already has {trainer.epoch} of {cfg.epochs} epochs "
                  f"(give a larger --epochs to continue)")
            return 0
    if trainer.parallel is not None:
        trainer.parallel.broadcast_state()          # every replica starts from rank 0's weights
    print(f"training {name} ({model.num_parameters():,} parameters) on {cfg.dataset}: {len(x_tr)} train / "
          f"{len(x_te)} test images, {len(train_loader)} steps per epoch", flush=True)
    with interrupt_guard(trainer.stop, quiet=not comm.is_main):
        trainer.fit(cfg.epochs)
    print(f"done: best test accuracy {100 * trainer.best_accuracy:.2f}% -> {trainer.best_path}; "
          f"last -> {trainer.last_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
