"""The command line: python -m cifar_tl {run, evaluate, predict, lr-find, pack, backbones, download}."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import DEVICES, ENGINES, PRECISIONS, PROFILES, Config, parse_unfreeze
from .console import enable_notices, say
from .errors import CifarTLError, ConfigError, one_line

# Flags whose name is not the field's: --no-cache sets cache=False, and so on.
_FLAGS = {"cache": "--no-cache", "progress": "--quiet", "standardize": "--standardize/--no-standardize"}
RUN_FLAGS: set[str] = set()  # the options of `run`, filled in by build_parser

EXAMPLES = """examples:
  python -m cifar_tl run                          # the default profile (auto: full on CUDA, cpu otherwise)
  python -m cifar_tl run --profile smoke --out runs/smoke
  python -m cifar_tl run --profile smoke --unfreeze 2 --out runs/ft   # fine-tune the top 2 stages
  python -m cifar_tl evaluate --checkpoint runs/smoke/head.pt
  python -m cifar_tl predict --checkpoint runs/smoke/head.pt photo.jpg
  python -m cifar_tl pack                         # a teacher: every split's features in one file
  python -m cifar_tl run --features FILE          # a student: train the head from that file, no images
  python -m cifar_tl backbones                    # what --backbone accepts
  python -m cifar_tl download                     # once, with internet, before an offline class
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported in one line (exit 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_FEATURES_HELP = ("train the head from a feature pack (made by `pack`): no images, no backbone run; "
                  "the pack's data and backbone options are the defaults")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def _unfreeze(text: str):
    try:
        return parse_unfreeze(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _data_args(q) -> None:
    q.add_argument("--profile", choices=PROFILES, help="full | cpu | smoke | auto (default: $CIFAR_TL_PROFILE or auto)")
    q.add_argument("--source", help="cifar100 | synthetic | folder:PATH")
    q.add_argument("--data-root", help="where datasets and the feature cache live (default $CIFAR_TL_DATA or ~/.cache/cifar_tl)")
    q.add_argument("--test-size", type=_positive, help="class-balanced subset of the test split")
    q.add_argument("--image-size", type=_positive, help="pixels the images are resized to")
    q.add_argument("--device", choices=DEVICES)
    q.add_argument("--precision", choices=PRECISIONS, help="of the frozen backbone (default auto: bf16 where native)")
    q.add_argument("--engine", choices=ENGINES, help="of the frozen backbone on a CPU (default auto: OpenVINO if installed)")
    q.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                   help="recompute the backbone for every image (the tutorial's path)")
    q.add_argument("--quiet", dest="progress", action="store_const", const=False, help="no progress bars")


def _model_args(q) -> None:
    q.add_argument("--train-size", type=_positive, help="class-balanced subset of the training split")
    q.add_argument("--val-size", type=_count, metavar="N",
                   help="training images held out for validation, class-balanced (default 10%% of the "
                        "training subset; 0: none, as the tutorial)")
    q.add_argument("--batch-size", type=_positive)
    q.add_argument("--backbone", metavar="NAME", help="any torchvision classification model (see `backbones`)")
    q.add_argument("--weights", help="imagenet | synthetic (pretrained here on generated images, built once, "
                   "offline; the smoke default) | none (random) | PATH to a state dict")
    q.add_argument("--standardize", dest="standardize", action="store_const", const=True,
                   help="standardise the features before the head (default: only for random weights)")
    q.add_argument("--seed", type=int)
    q.add_argument("--unfreeze", type=_unfreeze, metavar="K|all", help="fine-tune the top K stages of the backbone too")
    q.add_argument("--no-standardize", dest="standardize", action="store_const", const=False,
                   help="the tutorial's bare head even on random weights (it then stays near chance)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cifar_tl", description="Transfer learning on CIFAR-100 with torchvision.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Flags left out are absent from the namespace, so only what was typed overrides the profile.
    quiet = dict(argument_default=argparse.SUPPRESS)

    r = sub.add_parser("run", **quiet, help="train a head and evaluate it",
                       description="Train a head on frozen features (and fine-tune with --unfreeze), evaluate it, write a report.")
    _data_args(r)
    _model_args(r)
    r.add_argument("--out", help="output folder (default runs/<timestamp>)")
    r.add_argument("--features", metavar="PACK", help=_FEATURES_HELP)
    r.add_argument("--epochs", type=_positive)
    r.add_argument("--lr", type=float)
    r.add_argument("--head-epochs", type=_positive, help="head-only epochs before unfreezing (default 1)")
    r.add_argument("--lr-decay", type=float, help="learning-rate factor per unfrozen stage down (default 0.3)")
    r.add_argument("--weight-decay", type=float, help="AdamW weight decay when fine-tuning (default 0)")
    r.add_argument("--bn-train", action="store_const", const=True,
                   help="let BatchNorm statistics of unfrozen stages move (default: frozen)")
    r.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted run in DIR with its settings (--epochs N trains a finished one longer)")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out, or write into a non-empty folder")
    RUN_FLAGS.update(s for action in r._actions for s in action.option_strings)  # noqa: SLF001

    e = sub.add_parser("evaluate", **quiet, help="evaluate a saved head on its test split",
                       description="Evaluate a saved head or model. The model's settings come from the checkpoint; "
                                   "--profile only picks the data (source, test size).")
    e.add_argument("--checkpoint", required=True)
    _data_args(e)

    pr = sub.add_parser("predict", help="top-5 classes for image files")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--device", choices=DEVICES, default="cpu")
    pr.add_argument("images", nargs="+", metavar="IMAGE")

    lf = sub.add_parser("lr-find", **quiet, help="suggest a learning rate (a short exponential sweep)")
    _data_args(lf)
    _model_args(lf)
    lf.add_argument("--out", help="where to write lr_find.png (default: the current folder)")
    lf.add_argument("--features", metavar="PACK", help=_FEATURES_HELP)

    k = sub.add_parser("pack", **quiet, help="a teacher's feature pack: every split's features in one file",
                       description="Extract the frozen features of the training split (both flips), the "
                                   "validation and the test split into one safetensors file. Students train "
                                   "heads from it with `run --features FILE`: no images, no backbone run.")
    _data_args(k)
    _model_args(k)
    k.add_argument("--out", metavar="FILE", help="the pack (default <data root>/packs/<source>-<backbone>-"
                                                 "<size>px-<precision>.safetensors)")

    sub.add_parser("backbones", help="list the backbones --backbone accepts")

    d = sub.add_parser("download", help="fetch CIFAR-100 and ImageNet weights, and build the synthetic weights, once, for offline rooms")
    d.add_argument("--root", help="data folder (default $CIFAR_TL_DATA or ~/.cache/cifar_tl)")
    d.add_argument("--backbone", action="append", metavar="NAME",
                   help="weights to fetch (repeatable; default efficientnet_v2_s)")
    return p


def _overrides(a) -> dict:
    """The Config fields given on the command line."""
    fields = set(Config.fields()) - {"profile"}
    return {k: v for k, v in vars(a).items() if k in fields}


def _flag(dest: str) -> str:
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _default_out() -> Path:
    """runs/<timestamp>, made unique: two runs started in the same second get their own folders."""
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _config(a) -> Config:
    """The profile's config with the typed options on top; with --features and no --profile, the
    pack's own options (``pack.config_for``) with the typed ones on top."""
    try:
        if "features" in a and "profile" not in a:
            from . import pack

            return pack.config_for(a.features, **_overrides(a)).validate()
        return Config.for_profile(getattr(a, "profile", None)).replace(**_overrides(a)).validate()
    except ConfigError as e:
        env = os.environ.get("CIFAR_TL_PROFILE")
        raise ConfigError(f"{e} (from $CIFAR_TL_PROFILE)" if "profile" not in a and env else str(e)) from None


def _run(a) -> int:
    from . import pipeline

    if "resume" in a:
        given = set(vars(a)) - {"command", "resume"}
        fixed = sorted(given - set(Config.resumable()))
        if fixed:
            allowed = [f for f in Config.resumable() if _flag(f) in RUN_FLAGS]
            raise ConfigError(f"--resume continues {a.resume} with the settings it was started with; drop "
                              f"{', '.join(map(_flag, fixed))} (only {', '.join(map(_flag, allowed))} "
                              "may be given)")
        pipeline.run(None, a.resume, resume=True, **{k: getattr(a, k) for k in given})
        return 0
    from .parameters import ineffective

    cfg = _config(a)
    idle = ineffective(cfg, given=vars(a))
    if idle:
        raise ConfigError(f"{', '.join(map(_flag, idle))} only act(s) when fine-tuning: add --unfreeze K|all, "
                          "or drop it (the backbone stays frozen and nothing would use it)")
    out = getattr(a, "out", None) or _default_out()
    pipeline.run(cfg, out, overwrite="overwrite" in a)
    return 0


def _evaluate(a) -> int:
    from . import inference

    profile = Config.for_profile(a.profile) if "profile" in a else None
    m = inference.evaluate_checkpoint(a.checkpoint, profile, **_overrides(a))
    top5 = f", top-5 {m['test_top5']:.4f}" if m["test_top5"] is not None else ""
    say(f"test accuracy {m['test_accuracy']:.4f}{top5} on {m['n_test']} images ({m['source']})")
    return 0


def _predict(a) -> int:
    from . import inference

    failed = 0
    for path, result in inference.iter_predictions(a.checkpoint, a.images, device=a.device):
        if isinstance(result, str):
            say(f"error: {one_line(result, 2000)}", sys.stderr)
            failed += 1
            continue
        say(path)
        for name, prob in result:
            say(f"  {prob:7.2%}  {name}")
    return 1 if failed else 0


def _lr_find(a) -> int:
    from . import pipeline

    cfg = _config(a)
    out = Path(getattr(a, "out", None) or ".")
    result = pipeline.lr_find(cfg, out)
    say(f"suggested learning rate {result['suggestion']:.2g} (fastai's valley: two thirds down the longest "
        f"fall of the smoothed loss, which was lowest at {result['min_loss_lr']:.2g}); plot: {result['plot']}")
    return 0


def _pack(a) -> int:
    from . import pack

    path, meta = pack.make_pack(_config(a), getattr(a, "out", None))
    say(f"wrote {path} ({path.stat().st_size / 1e6:,.1f} MB): {pack.describe(meta)}")
    say(f"students: copy it, then: python -m cifar_tl run --features {path.name}")
    return 0


def _backbones(_a) -> int:
    from .backbones import format_backbones_table

    say(format_backbones_table())
    return 0


def _download(a) -> int:
    from . import data
    from .backbones import build_backbone, check_backbone, weights_file
    from .config import default_data_root
    from .storage import check_writable

    names = a.backbone or ["efficientnet_v2_s"]
    for name in names:
        check_backbone(name)
    root = Path(a.root or default_data_root())
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root} is a file, not a folder: pass a folder to download into")
    try:  # said in download's own terms (data's advice names run's options)
        check_writable(root)
    except CifarTLError as e:
        raise type(e)(f"--root {root} cannot be written: {e}") from None
    for train in (True, False):
        data.cifar100(root / "cifar100", train=train, download=True)
    say(f"CIFAR-100 is in {root / 'cifar100'}")
    for name in names:
        build_backbone(name, "imagenet")
        say(f"{name} ImageNet weights are in {weights_file(name)}")
    build_backbone("resnet18", "synthetic")
    from .pretrain import checkpoints_dir

    say(f"resnet18 synthetic weights (the smoke profile's) are in {checkpoints_dir()}")
    say("offline classroom: copy both folders to each machine (or set CIFAR_TL_DATA and TORCH_HOME)")
    return 0


def _sigterm(signum, frame):
    """SIGTERM (a closed Colab tab, `kill`) stops a job like Ctrl-C: completed epochs are kept."""
    raise KeyboardInterrupt


HANDLERS = {"run": _run, "evaluate": _evaluate, "predict": _predict, "lr-find": _lr_find,
            "pack": _pack, "backbones": _backbones, "download": _download}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a known failure is one line on stderr: exit 2 for bad arguments, else 1."""
    args = build_parser().parse_args(argv)
    enable_notices()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if in_main_thread else None
    try:
        return HANDLERS[args.command](args)
    except ConfigError as e:
        say(f"python -m cifar_tl {args.command}: error: {one_line(e, 2000)}", sys.stderr)
        return 2
    except CifarTLError as e:
        say(f"error: {one_line(e, 2000)}", sys.stderr)
        return 1
    except KeyboardInterrupt:  # run turns it into Interrupted; this is evaluate, predict, download
        say(f"error: interrupted: {args.command} did not finish; run it again", sys.stderr)
        return 1
    except BrokenPipeError:  # `predict ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
