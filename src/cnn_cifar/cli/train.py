"""train_cli: train a model on CIFAR-10/100 with per-model tuned defaults (the registry's recipes)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .. import backend, nn
from ..data import BatchLoader, augment, get_spec, load_dataset
from ..data.datasets import Dataset
from ..distributed import DataParallel
from ..models import build_model, options_of
from ..optim import GradScaler
from ..training import (
    Checkpoint,
    CheckpointError,
    Learner,
    Loaders,
    LoopOptions,
    RunConfig,
    RunOutput,
    Schedules,
    Trainer,
    TrainingInterrupted,
    interrupt_guard,
    load_checkpoint,
    resolve,
    transfer_weights,
)
from ..training.evaluation import evaluate
from ..training.hooks import format_settings
from ..training.mixing import MixedCrossEntropy
from ..training.tta import with_tta
from . import common as C
from . import parallel
from .config_file import ConfigFileError, config_argv, write_config
from .train_args import build_parser


def _onoff(items: list[tuple[bool, str]]) -> str:
    return ", ".join(text for on, text in items if on) or "none"


def summary_lines(cfg: RunConfig) -> list[str]:
    """What a user checks at a glance before a run: model and data, optimizer, schedules, augmentation and
    regularisation, and where the run writes (every setting: ``--verbose``, and the run's log)."""
    opt = f"{cfg.optimizer}, lr {cfg.lr:g}"
    opt += (f", momentum {cfg.momentum:g}{' (Nesterov)' if cfg.nesterov else ''}" if cfg.optimizer == "sgd"
            else f", betas {cfg.beta1:g} {cfg.beta2:g}")
    opt += f", weight decay {cfg.weight_decay:g}; batch {cfg.batch_size}, {cfg.epochs:g} epochs"
    opt += f", batch-norm group lr x{cfg.bn_lr_scale:g}" if cfg.bn_lr_scale != 1 else ""
    opt += ", loss summed over the batch" if cfg.loss_reduction == "sum" else ""
    opt += ", mixed precision" if cfg.amp else ""
    lr = {"onecycle": f"onecycle to {cfg.max_lr or cfg.lr:g} over {cfg.pct_start:g} of the run",
          "step": f"step x{cfg.lr_decay_factor:g}" + (f" at {cfg.lr_decay_steps}" if cfg.lr_decay_steps else ""),
          "plateau": f"plateau x{cfg.plateau_factor:g} after {cfg.plateau_patience} epochs without progress",
          }.get(cfg.lr_schedule, cfg.lr_schedule)
    lr += f", {cfg.warmup_epochs:g} warm-up epochs" if cfg.warmup_epochs else ""
    lr += f", floor {cfg.min_lr:g}" if cfg.min_lr else ""
    dropout = f"dropout {cfg.dropout_rate:g}" + (f" ({cfg.dropout_schedule})" if cfg.dropout_schedule != "none" else "")
    a = cfg.augmentation()
    augment = _onoff([(a.crop_padding > 0, f"crop {a.crop_padding}"), (a.translate > 0, f"translate {a.translate}"),
                      (a.flip, "alternating flip" if a.alternating_flip else "flip"),
                      (a.shift_scale_rotate is not None, "shift-scale-rotate"),
                      (a.color_jitter is not None, "colour jitter"), (a.cutout > 0, f"cutout {a.cutout}"),
                      (a.mixup > 0, f"mixup {a.mixup:g}"), (a.cutmix > 0, f"cutmix {a.cutmix:g}")])
    regular = _onoff([(cfg.label_smoothing > 0, f"label smoothing {cfg.label_smoothing:g}"),
                      (cfg.ema > 0, f"weight EMA {cfg.ema:g}"),
                      (bool(cfg.lookahead_period), f"lookahead every {cfg.lookahead_period} steps"),
                      (bool(cfg.freeze_after), "frozen after: " + " ".join(cfg.freeze_after or ())),
                      (cfg.tta != "none", f"final evaluation with {cfg.tta} TTA"),
                      (cfg.clip_grad_norm > 0, f"gradient norm clipped at {cfg.clip_grad_norm:g}")])
    limits = ", ".join(f"first {n} {what} images" for n, what in ((cfg.limit_train, "train"), (cfg.limit_test, "test"))
                       if n is not None)
    return [f"model      {cfg.model} on {cfg.dataset} from {cfg.data}" + (f" ({limits})" if limits else "")
            + f", seed {cfg.seed}",
            f"optimizer  {opt}",
            f"schedule   lr {lr}; {dropout}",
            f"augment    {augment}; regularisation: {regular}",
            f"output     checkpoints in {cfg.checkpoint_dir}/, log in {cfg.log_dir}/{cfg.model}.log "
            f"(every setting: --verbose, and the log)"]


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
    cfg, ck, src = _settings(parser, args)
    if args.dump_config:
        path = write_config(cfg.to_dict(), args.dump_config, "train_cli.py settings, written by --dump-config; "
                            "train with: train_cli.py --config FILE")
        print(f"wrote {path}")
        return 0
    amp = _start(cfg, args)
    if args.summary:
        from .summary import format_summary
        num_classes = ck.num_classes if ck is not None and ck.num_classes else get_spec(cfg.dataset).num_classes
        print(format_summary(build_model(cfg.model, num_classes=num_classes, dropout=cfg.dropout_rate, seed=cfg.seed,
                                         **({"shortcut": cfg.shortcut} if cfg.shortcut else {}))))
        return 0
    comm = parallel.communicator(args.distributed, args.sync_bn, cfg.batch_size)
    ds = _dataset(cfg, args, comm)
    x_tr, y_tr = ds.x_train[:cfg.limit_train], ds.y_train[:cfg.limit_train]
    x_te, y_te = ds.x_test[:cfg.limit_test], ds.y_test[:cfg.limit_test]
    if len(x_tr) < 2:
        raise ValueError(f"need at least 2 training images, have {len(x_tr)}")
    if ck is not None and (ck.num_classes or ds.spec.num_classes) != ds.spec.num_classes:
        raise CheckpointError(f"{args.resume} was trained with {ck.num_classes} classes, "
                              f"{cfg.dataset} has {ds.spec.num_classes}")
    base = ck if ck is not None else src
    model = _model(cfg, args, base, src, ds.spec.num_classes, comm)
    bs = min(cfg.batch_size, len(x_tr))           # (the loader's shard checks it splits over the ranks)
    # Weights from a checkpoint keep the normalisation they were trained with; a new run uses the dataset's.
    mean, std = base.normalization(ds.spec.mean, ds.spec.std) if base is not None else (ds.spec.mean, ds.spec.std)
    train_loader = BatchLoader(x_tr, y_tr, bs, mean, std, shuffle=True, augment_cfg=cfg.augmentation(),
                               rng=np.random.default_rng(cfg.seed), drop_last=True, prefetch=not args.no_prefetch,
                               shard=(comm.rank, comm.size))
    part = parallel.test_part(len(x_te), comm)       # each rank evaluates its part; the counts are summed
    test_loader = BatchLoader(x_te[part], y_te[part], max(bs, 500), mean, std, prefetch=not args.no_prefetch)
    if args.show_augment:
        from ..viz import show_augment  # matplotlib is imported only when asked
        print(f"wrote {show_augment(train_loader, args.show_augment, ds.classes, cfg.model)}")
        return 0
    init_seconds = _init_from_data(model, x_tr, mean, std) if base is None else 0.0
    hooks = _hooks(cfg, args, model, cfg.make_bn_batches(x_tr, y_tr, bs, mean, std))
    trainer = _trainer(cfg, args, model, Loaders(train_loader, test_loader, ds.spec.num_classes), ds.classes,
                       amp, comm, hooks)
    if ck is not None and not _resume(trainer, ck, cfg, args):
        return 0
    if trainer.parallel is not None:
        trainer.parallel.broadcast_state()          # every replica starts from rank 0's weights
    print(f"training {cfg.model} ({model.num_parameters():,} parameters) on {cfg.dataset}: {len(x_tr)} train / "
          f"{len(x_te)} test images, {len(train_loader)} steps per epoch", flush=True)
    with interrupt_guard(trainer.stop, quiet=not comm.is_main):
        trainer.fit(cfg.epochs)
        tta = _final_tta(trainer, cfg, comm) if trainer.finished is None and cfg.tta != "none" else None
    print(f"done: best test accuracy {100 * trainer.best_accuracy:.2f}% -> {trainer.best_path}; "
          f"last -> {trainer.last_path}")
    if comm.is_main:
        print(time_to_result(trainer.history, init_seconds, tta), flush=True)
    return 0


def _init_from_data(model: nn.Module, x_train: np.ndarray, mean, std) -> float:
    """A model with a data-dependent initialisation (``init_from_data``, e.g. airbench94's whitening layer) gets
    its first ``init_images`` training images, normalised as the loader normalises its batches; returns the
    seconds it took (0 for other models)."""
    init = getattr(model, "init_from_data", None)
    if init is None:
        return 0.0
    t0 = time.perf_counter()
    init(augment.normalize(x_train[:model.init_images], mean, std))
    return time.perf_counter() - t0


def _final_tta(trainer: Trainer, cfg: RunConfig, comm) -> dict:
    """The run's final weights evaluated with test-time augmentation ``cfg.tta``; printed and appended to the
    log. Returns the evaluation with its ``seconds``."""
    t0 = time.perf_counter()
    with trainer.evaluated_weights(evaluating=True):
        ev = evaluate(with_tta(trainer.model, cfg.tta), trainer.test_loader, trainer.criterion, trainer.num_classes,
                      progress=not trainer.quiet and comm.is_main, desc=f"test ({cfg.tta})",
                      stop=trainer.stop if comm.size == 1 else None, comm=comm)
    if ev is None:
        raise TrainingInterrupted(trainer.last_path, trainer.epoch, 0)
    ev["seconds"] = time.perf_counter() - t0
    if comm.is_main:
        line = (f"final weights with {cfg.tta} test-time augmentation: test loss {ev['loss']:.4f} "
                f"acc {100 * ev['accuracy']:6.2f}%  {ev['seconds']:.1f}s")
        print(line, flush=True)
        log = Path(cfg.log_dir) / f"{cfg.model}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(line + "\n")
    return ev


def time_to_result(history: list[dict], init_seconds: float, tta: dict | None) -> str:
    """Time to result as the fast-training papers count it: the data-dependent initialisation, the training
    steps and the final TTA evaluation; the per-epoch evaluations (and checkpoint writes) beside it."""
    train = sum(r.get("train_seconds", 0.0) for r in history)
    evals = sum(r["seconds"] - r.get("train_seconds", r["seconds"]) for r in history)
    parts = ([f"initialisation {init_seconds:.1f}s"] if init_seconds else []) + [f"training {train:.1f}s"] + (
        [f"final TTA evaluation {tta['seconds']:.1f}s"] if tta else [])
    total = init_seconds + train + (tta["seconds"] if tta else 0.0)
    return (f"time to result {total:.1f}s ({', '.join(parts)}); per-epoch evaluations and checkpoints "
            f"{evals:.1f}s besides")


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[RunConfig, Checkpoint | None,
                                                                                  Checkpoint | None]:
    """The run's settings (flags, else the resumed checkpoint's, else the recipe's), the checkpoint it resumes
    and the one it starts from; flag combinations that make no sense are argparse errors."""
    if args.sync_bn and not args.distributed:
        parser.error("--sync-bn needs --distributed")
    if args.resume and args.init_from:
        parser.error("--resume continues a run, --init-from starts a new one from its weights: give one")
    ck = load_checkpoint(args.resume, expected_model=args.model) if args.resume else None
    src = load_checkpoint(args.init_from) if args.init_from else None
    if src is not None and args.model is None:
        args.model = src.model                                # the architecture the weights are for
    try:
        cfg = resolve(vars(args), ck.args if ck is not None else None, args.resume)
    except ValueError as exc:
        parser.error(C.message(exc))
    if cfg.tensorboard and not args.dump_config:
        from ..training.tensorboard import tensorboard_available
        if not tensorboard_available():
            parser.error("--tensorboard needs tensorboardX, which is not installed: uv sync --group tensorboard "
                         "(or pip install tensorboardX)")
    return cfg, ck, src


def _start(cfg: RunConfig, args: argparse.Namespace) -> bool:
    """Join the ranks, choose the backend and say what will run (summary or every setting, warnings); returns
    whether mixed precision is on (it needs CuPy)."""
    if args.distributed:
        parallel.join(cfg.backend)
    C.select_backend(cfg.backend, quiet=False)
    amp = cfg.amp and backend.name == "cupy"
    if cfg.amp and not amp:
        print("--amp: mixed precision needs the CuPy backend; training in float32", flush=True)
    if args.verbose:
        print("\n".join(format_settings(cfg.to_dict())))
    elif not args.quiet:
        print("\n".join(summary_lines(cfg)))
    if C.active_comm is None or C.active_comm.is_main:          # once, not once per rank
        for note in cfg.warnings():
            print(f"warning: {note}", file=sys.stderr, flush=True)
    return amp


def _dataset(cfg: RunConfig, args: argparse.Namespace, comm) -> Dataset:
    """The dataset: rank 0 downloads it if needed while the other ranks wait, then read it."""
    if comm.is_main:
        ds = load_dataset(cfg.dataset, cfg.data, download=not args.no_download, progress=not args.quiet)
    comm.barrier()
    if not comm.is_main:
        ds = load_dataset(cfg.dataset, cfg.data, download=False, progress=False)
    return ds


def _model(cfg: RunConfig, args: argparse.Namespace, base: Checkpoint | None, src: Checkpoint | None,
           num_classes: int, comm) -> nn.Module:
    """The model, built as the checkpoint it continues or starts from was (its builder options), with
    --init-from's weights, its dropout stream seeded per rank and, with --sync-bn, synchronised batch norms."""
    options = options_of(base.model_config) if base is not None else {}   # e.g. the shortcut it was built with
    if cfg.shortcut:
        options["shortcut"] = cfg.shortcut
    model = build_model(cfg.model, num_classes=num_classes, dropout=cfg.dropout_rate, seed=cfg.seed, **options)
    if src is not None:
        if src.model != cfg.model:
            raise CheckpointError(f"{args.init_from} holds a '{src.model}' model, not '{cfg.model}'")
        fresh = transfer_weights(model, src)
        print(f"initialised from {args.init_from}" + (
            f"; its {src.num_classes}-class head ({', '.join(fresh)}) re-initialised for {num_classes} classes"
            if fresh else ""), flush=True)
    nn.random.manual_seed(cfg.seed + 1)
    nn.random.set_rank(comm.rank)                     # each rank its own dropout masks
    if args.sync_bn:
        nn.convert_sync_batchnorm(model, comm)
    return model


def _hooks(cfg: RunConfig, args: argparse.Namespace, model: nn.Module, bn_batches) -> list:
    """The run's features as hooks: the weights' average, lookahead, snapshots, early stopping, frozen
    parameters, TensorBoard, plots."""
    ema, lookahead = cfg.make_ema(model, bn_batches), cfg.make_lookahead(model)
    hooks = [h for h in (ema, lookahead) if h is not None] + cfg.run_hooks()
    if args.plot:
        from ..viz import PlotProgress  # matplotlib is imported only when plots are asked for
        hooks.append(PlotProgress(f"viz/{cfg.model}"))
    return hooks


def _trainer(cfg: RunConfig, args: argparse.Namespace, model: nn.Module, loaders: Loaders, classes: list[str],
             amp: bool, comm, hooks: list) -> Trainer:
    """The Trainer wired from the settings: loss, optimizer, schedules, outputs, loop options."""
    criterion = cfg.make_criterion()
    if cfg.augmentation().mixes:
        criterion = MixedCrossEntropy(criterion)
    optimizer = cfg.build_optimizer(model)
    return Trainer(
        Learner(cfg.model, model, optimizer, criterion), loaders,
        Schedules(cfg.make_lr_schedule(steps_per_epoch=len(loaders.train)), cfg.make_dropout_schedule()),
        RunOutput(cfg.checkpoint_dir, f"{cfg.log_dir}/{cfg.model}.log",
                  run_info={"args": cfg.run_settings(), "dataset": cfg.dataset, "classes": classes}),
        LoopOptions(quiet=bool(args.quiet), clip_grad_norm=cfg.clip_grad_norm or None,
                    scaler=GradScaler(enabled=amp),
                    parallel=DataParallel(model, comm, optimizer=optimizer) if args.distributed else None),
        hooks)


def _resume(trainer: Trainer, ck: Checkpoint, cfg: RunConfig, args: argparse.Namespace) -> bool:
    """Restore the checkpoint's state and say where the run stands; False when it has nothing left to do."""
    trainer.restore(ck)
    print(f"resumed from {args.resume}: {trainer.epoch} epoch(s) done"
          + (f", {trainer.step} step(s) into epoch {trainer.epoch + 1}" if trainer.step else "")
          + f"; checkpoints go to {cfg.checkpoint_dir}")
    if trainer.epoch >= cfg.epochs:
        print(f"nothing to do: the checkpoint already has {trainer.epoch} of {cfg.epochs:g} epochs "
              f"(give a larger --epochs to continue)")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    return C.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
