"""train_cli's flags: the argument parser, one function per group of flags. Every default shown in a help text
is read from where it is defined: a recipe setting's from the registered recipes (per model), a run setting's
from RunConfig, AdamW's decay from the optimizer; the flags themselves default to None ("not given"), which
``training.config.resolve`` fills in."""
from __future__ import annotations

import argparse
import re

from ..data.loader import CUTOUT_FILLS, SSR_BORDERS
from ..models import build_model, list_models, recipe
from ..nn.residual import SHORTCUTS
from ..optim import ADAMW_DEFAULT_WEIGHT_DECAY, DROPOUT_SCHEDULES, LR_SCHEDULES, OPTIMIZERS
from ..optim.schedules import PIECEWISE_POINTS
from ..training.config import RunConfig
from ..training.tta import TTA_CHOICES
from . import common as C


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


def run_default(field: str) -> str:
    """RunConfig's default of a run setting (not a recipe's), for a flag's help text."""
    return f"[{getattr(RunConfig, field)}]"


class HelpFormatter(argparse.HelpFormatter):
    """Writes the --model help (every model with its parameter count, which means building each) only when
    help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "model":
            return f"architecture {run_default('model')}; parameters for 10 classes: " + ", ".join(
                f"{n} {build_model(n).num_parameters():,}" for n in list_models())
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cli.py", description="Train a CNN on CIFAR-10/100 (from-scratch NumPy/CuPy library). "
        "Options left out take the model's tuned defaults, summarised at start.",
        formatter_class=HelpFormatter)
    for add_group in (_model_and_run, _optimizer, _lr_schedule, _dropout, _data_and_augmentation, _output,
                      _advanced):
        add_group(p)
    return p


def _model_and_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and run")
    g.add_argument("--model", choices=list_models(), default=None, help=f"architecture {run_default('model')}")
    g.add_argument("--epochs", type=C.epoch_count, default=None,
                   help=f"total epochs; a fraction ends the last epoch early {per_model('epochs')}")
    g.add_argument("--batch-size", type=C.positive_int, default=None, help=f"batch size {per_model('batch_size')}")
    g.add_argument("--seed", type=C.nonneg_int, default=None, help="seed for weights, shuffling, augmentation "
                   f"and dropout {run_default('seed')}")
    g.add_argument("--shortcut", choices=SHORTCUTS, default=None,
                   help="ResNets: 1x1-conv 'projection' shortcuts (default) or the paper's parameter-free 'pad' "
                        "(option A)")
    C.add_backend_arg(g)


def _optimizer(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=per_model("optimizer"))
    g.add_argument("--lr", type=C.positive_float, default=None, help=f"peak learning rate {per_model('lr')}")
    g.add_argument("--momentum", type=C.nonneg_float, default=None, help=f"SGD momentum {per_model('momentum')}")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Nesterov momentum {per_model('nesterov')}")
    g.add_argument("--weight-decay", type=C.nonneg_float, default=None,
                   help="L2 weight decay added to the gradient, as torch.optim; with adamw decoupled "
                   f"(p *= 1 - lr*wd), default {ADAMW_DEFAULT_WEIGHT_DECAY:g} as torch.optim.AdamW "
                   f"{per_model('weight_decay')}")
    g.add_argument("--beta1", type=C.probability, default=None, help=f"Adam beta1 {per_model('beta1')}")
    g.add_argument("--beta2", type=C.probability, default=None, help=f"Adam beta2 {per_model('beta2')}")
    g.add_argument("--label-smoothing", type=C.probability, default=None,
                   help=f"label smoothing {per_model('label_smoothing')}")
    g.add_argument("--loss-reduction", choices=("mean", "sum"), default=None,
                   help="the batch's loss: the mean over its images or their sum (as PyTorch's reduction; a sum "
                   f"scales the gradients by the batch size) {per_model('loss_reduction')}")
    g.add_argument("--bn-lr-scale", type=C.positive_float, default=None, metavar="K",
                   help="train the batch norms' parameters as a parameter group of their own, with K x the lr and "
                   f"the weight decay divided by K (the same decay per step); 1 = one group {per_model('bn_lr_scale')}")
    g.add_argument("--lookahead-period", type=C.positive_int, default=None, metavar="STEPS",
                   help="lookahead: every STEPS steps pull a slow copy of the weights toward the training weights "
                   "(decay 0.95^STEPS x progress^3) and reset them to it; the run ends on the slow weights; None = off "
                   f"{per_model('lookahead_period')}")
    g.add_argument("--freeze-after", nargs="+", default=None, metavar="NAME=EPOCHS",
                   help="the parameter NAME (as in the state dict) trains for its first EPOCHS epochs only "
                   "[airbench94: whiten.bias=3; others: none]")
    g.add_argument("--clip-grad-norm", type=C.nonneg_float, default=None, metavar="MAX",
                   help="clip the global L2 norm of all gradients to MAX before each update, as "
                   f"torch.nn.utils.clip_grad_norm_; 0 = off {per_model('clip_grad_norm')}")
    g.add_argument("--ema", type=C.probability, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights and BN statistics (e.g. 0.999), "
                   f"evaluate it each epoch and save it as the checkpoints' weights; 0 = off {per_model('ema')}")
    g.add_argument("--ema-bn-batches", type=C.nonneg_int, default=None, metavar="N",
                   help="with --ema: before each evaluation, measure the average's batch-norm statistics on the "
                   "first N training batches, augmented as in training (the same images each time), as "
                   "torch.optim.swa_utils.update_bn; 0 = keep the averaged statistics "
                   f"{per_model('ema_bn_batches')}")


def _lr_schedule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learning-rate scheduling")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="decay after warmup, evaluated every step; onecycle = OneCycleLR (its own warm-up), "
                   "plateau = ReduceLROnPlateau on the test loss, piecewise = linear between --lr-points "
                   f"{per_model('lr_schedule')}")
    g.add_argument("--warmup-epochs", type=C.nonneg_float, default=None,
                   help=f"linear warmup from 0 {per_model('warmup_epochs')}")
    g.add_argument("--min-lr", type=C.nonneg_float, default=None, help=f"floor of the decay {per_model('min_lr')}")
    g.add_argument("--lr-decay-factor", type=C.unit_interval_open, default=None,
                   help=f"step schedule: multiply by this at each decay {per_model('lr_decay_factor')}")
    g.add_argument("--lr-decay-steps", type=C.positive_float, nargs="+", default=None, metavar="E",
                   help="step schedule: one value = epochs between decays after warmup; several = the epochs "
                   "to decay at, as MultiStepLR milestones [auto: every third of the post-warmup run]")
    g.add_argument("--max-lr", type=C.positive_float, default=None,
                   help="onecycle: peak learning rate, at least --lr [--lr]")
    g.add_argument("--pct-start", type=C.open_unit_interval, default=None,
                   help=f"onecycle: fraction of the run spent rising to --max-lr {per_model('pct_start')}")
    g.add_argument("--lr-points", type=C.nonneg_float, nargs="+", default=None, metavar="U F",
                   help="piecewise: the lr factor F at fraction U of the run, pairs with U rising from 0 to 1, linear "
                   "between them (as LambdaLR) [" + " ".join(f"{v:g}" for v in PIECEWISE_POINTS) + ": from 0.2 of "
                   "--lr up to it over 23%% of the steps, then down to 0.07 of it]")
    g.add_argument("--plateau-factor", type=C.open_unit_interval, default=None,
                   help=f"plateau: multiply the lr by this when the test loss stalls {per_model('plateau_factor')}")
    g.add_argument("--plateau-patience", type=C.nonneg_int, default=None,
                   help="plateau: epochs without improvement of the test loss before a cut "
                   f"{per_model('plateau_patience')}")


def _dropout(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dynamic dropout")
    g.add_argument("--dropout-schedule", choices=DROPOUT_SCHEDULES, default=None,
                   help=f"how the dropout rate changes by epoch {per_model('dropout_schedule')}")
    g.add_argument("--dropout-rate", type=C.probability, default=None, help=f"initial rate {per_model('dropout_rate')}")
    g.add_argument("--min-dropout", type=C.probability, default=None,
                   help=f"final/lowest rate {per_model('min_dropout')}")
    g.add_argument("--max-dropout", type=C.probability, default=None,
                   help=f"adaptive: highest rate {per_model('max_dropout')}")


def _data_and_augmentation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and augmentation")
    g.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None, help=run_default("dataset"))
    g.add_argument("--data", default=None,
                   help=f"folder holding cifar-10-batches-py / cifar-100-python {run_default('data')}")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    g.add_argument("--no-augment", action="store_true", default=None, help="no augmentation at all")
    g.add_argument("--crop-padding", type=C.nonneg_int, default=None,
                   help=f"random-crop padding {per_model('crop_padding')}")
    g.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips")
    g.add_argument("--translate", type=C.nonneg_int, default=None, metavar="N",
                   help="random translation by up to N pixels with reflect padding, as the fast CIFAR recipes "
                   f"(instead of --crop-padding's zero padding: give --crop-padding 0) {per_model('translate')}")
    g.add_argument("--alternating-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip each image on alternate epochs, half of them from the first (instead of at random "
                   f"per batch) {per_model('alternating_flip')}")
    g.add_argument("--cutout", type=C.nonneg_int, default=None,
                   help=f"cutout square size, 0 = off {per_model('cutout')}")
    g.add_argument("--cutout-fill", choices=CUTOUT_FILLS, default=None,
                   help="cutout fills with the dataset mean (0 after normalisation) or black "
                   f"{per_model('cutout_fill')}")
    g.add_argument("--cutout-p", type=C.unit_interval_open, default=None,
                   help=f"cutout probability per image {per_model('cutout_p')}")
    g.add_argument("--shift-scale-rotate", type=C.nonneg_float, nargs=3, default=None,
                   metavar=("SHIFT", "SCALE", "DEGREES"), help="random affine per image as albumentations' "
                   "ShiftScaleRotate: shift up to SHIFT of the size, scale in 1 +- SCALE, rotate up to DEGREES "
                   "(e.g. 0.0625 0.1 15); bilinear [off]")
    g.add_argument("--ssr-p", type=C.unit_interval_open, default=None,
                   help=f"shift-scale-rotate probability per image {per_model('ssr_p')}")
    g.add_argument("--ssr-border", choices=SSR_BORDERS, default=None,
                   help=f"shift-scale-rotate border: mirror (OpenCV's REFLECT_101) or black {per_model('ssr_border')}")
    g.add_argument("--color-jitter", type=C.nonneg_float, nargs=4, default=None, metavar=("B", "C", "S", "H"),
                   help="torchvision ColorJitter(brightness, contrast, saturation, hue) per image, in a random "
                   "order (e.g. 0.2 0.2 0.2 0.02) [off]")
    g.add_argument("--mixup", type=C.nonneg_float, default=None, metavar="ALPHA",
                   help=f"mixup with lam ~ Beta(ALPHA, ALPHA) per batch; 0 = off {per_model('mixup')}")
    g.add_argument("--cutmix", type=C.nonneg_float, default=None, metavar="ALPHA",
                   help="cutmix with lam ~ Beta(ALPHA, ALPHA) per batch (with --mixup: either, 1/2 each); 0 = off "
                   f"{per_model('cutmix')}")
    g.add_argument("--tta", choices=("none", *TTA_CHOICES), default=None,
                   help="test-time augmentation of the run's final evaluation (after the last epoch): flip = "
                   "the image and its mirror; flip-translate = also shifted a pixel each way (6 views) "
                   f"{per_model('tta')}")
    g.add_argument("--show-augment", type=C.positive_int, default=None, metavar="N",
                   help="write a grid of N augmented training images to viz/<model>/<model>_augment.png and exit")
    g.add_argument("--no-prefetch", action="store_true", help="build batches in the main thread")


def _output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir", default=None,
                   help=f"where <model>_best/_last.pkl and history go {run_default('checkpoint_dir')}")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue a run from a checkpoint (its settings apply unless given again)")
    g.add_argument("--init-from", metavar="CKPT", default=None,
                   help="start a new run from a checkpoint's weights (fresh optimizer and schedule; the "
                        "classifier is re-initialised if the class count differs)")
    g.add_argument("--log-dir", default=None, help=f"per-epoch log <log-dir>/<model>.log {run_default('log_dir')}")
    g.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard scalars here (needs tensorboardX: uv sync --group tensorboard)")
    g.add_argument("--tensorboard-every", type=C.nonneg_int, default=None, metavar="N",
                   help="with --tensorboard, also log the batch loss and lr every N steps; 0 = per epoch only "
                   f"{run_default('tensorboard_every')}")
    g.add_argument("--plot", action="store_true", help="refresh viz/<model>/<model>_training_progress.png each epoch")
    g.add_argument("--quiet", action="store_true", help="no progress bars or settings summary")
    g.add_argument("--verbose", action="store_true", help="print every setting at start, one per line (the run's "
                   "log has them too), instead of the summary")
    g.add_argument("--summary", action="store_true", help="print the model as a table (layers, output shapes, "
                   "parameters, multiply-adds) and exit")
    g.add_argument("--save-every", type=C.nonneg_int, default=None, metavar="N",
                   help=f"also keep <model>_epoch<N>.pkl every N epochs; 0 = off {run_default('save_every')}")
    g.add_argument("--early-stop", type=C.nonneg_int, default=None, metavar="PATIENCE",
                   help="stop when test accuracy has not improved for PATIENCE epochs; 0 = off "
                   f"{run_default('early_stop')}")
    g.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read settings from a TOML file (keys: any flag's name, e.g. lr-schedule = \"onecycle\"); "
                   "flags given on the command line win")
    g.add_argument("--dump-config", metavar="FILE.toml", default=None,
                   help="write the effective settings to a TOML file (for --config) and exit")


def _advanced(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("advanced")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision on the CuPy backend: float16 convolutions and matrix products, float32 "
                   "master weights, batch-norm statistics and loss, dynamic loss scaling; on NumPy it says so "
                   f"and trains in float32 {per_model('amp')}")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks mpirun/srun started (uv sync --group distributed); "
                   "--batch-size stays the global batch, split evenly over the ranks")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch-norm statistics over the whole global batch (SyncBatchNorm) "
                   "instead of each rank's shard")
    g.add_argument("--limit-train", type=C.positive_int, default=None, help="use only the first N training images")
    g.add_argument("--limit-test", type=C.positive_int, default=None, help="use only the first N test images")
