"""The command line: python -m cifar_tl {run, evaluate, predict, download}."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import PROFILES, Config
from .errors import CifarTLError, ConfigError, one_line
from .models import BACKBONES

# What --resume may change (the rest comes from the run's config.json), and what evaluate takes
# from --profile (the data; the model's settings always come from the checkpoint).
RESUME_OPTIONS = ("epochs", "device", "progress", "data_root")
EVALUATE_PROFILE_FIELDS = ("source", "test_size", "amp")
_FLAGS = {"cache": "--no-cache", "progress": "--quiet", "standardize": "--no-standardize"}

EXAMPLES = """examples:
  python -m cifar_tl run                          # the default profile (auto: full on CUDA, cpu otherwise)
  python -m cifar_tl run --profile smoke --out runs/smoke
  python -m cifar_tl evaluate --checkpoint runs/smoke/head.pt
  python -m cifar_tl predict --checkpoint runs/smoke/head.pt photo.jpg
  python -m cifar_tl download                     # once, with internet, before an offline class
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported in one line (exit 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _weights(text: str):
    return None if text.lower() in ("none", "random") else text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cifar_tl", description="Transfer learning on CIFAR-100 with torchvision.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Flags left out are absent from the namespace, so only what was typed overrides the profile.
    quiet = dict(argument_default=argparse.SUPPRESS)

    def data_model_args(q):
        q.add_argument("--profile", choices=PROFILES, help="full | cpu | smoke | auto (default: $CIFAR_TL_PROFILE or auto)")
        q.add_argument("--source", help="cifar100 | synthetic | folder:PATH")
        q.add_argument("--data-root", help="where datasets and the feature cache live (default $CIFAR_TL_DATA or ~/.cache/cifar_tl)")
        q.add_argument("--test-size", type=_positive, help="class-balanced subset of the test split")
        q.add_argument("--image-size", type=_positive, help="pixels the images are resized to")
        q.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
        q.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                       help="recompute the backbone for every image (the tutorial's path)")
        q.add_argument("--quiet", dest="progress", action="store_const", const=False, help="no progress bars")

    r = sub.add_parser("run", **quiet, help="train a head and evaluate it", description="Train a head on frozen features, evaluate it, write a report.")
    data_model_args(r)
    r.add_argument("--out", help="output folder (default runs/<timestamp>)")
    r.add_argument("--train-size", type=_positive, help="class-balanced subset of the training split")
    r.add_argument("--epochs", type=_positive)
    r.add_argument("--batch-size", type=_positive)
    r.add_argument("--lr", type=float)
    r.add_argument("--backbone", choices=list(BACKBONES), metavar="NAME", help=f"one of: {', '.join(BACKBONES)}")
    r.add_argument("--weights", type=_weights, help="imagenet | none | PATH to a state dict")
    r.add_argument("--seed", type=int)
    r.add_argument("--no-standardize", dest="standardize", action="store_const", const=False,
                   help="feed raw features to the head, as the tutorial did (random backbones then fail)")
    r.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted run in DIR with its settings (--epochs N trains a finished one longer)")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out")

    e = sub.add_parser("evaluate", **quiet, help="evaluate a saved head on its test split",
                       description="Evaluate a saved head. The model's settings come from the checkpoint; "
                                   "--profile only picks the data (source, test size).")
    e.add_argument("--checkpoint", required=True)
    data_model_args(e)

    pr = sub.add_parser("predict", help="top-5 classes for image files")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="cpu")
    pr.add_argument("images", nargs="+", metavar="IMAGE")

    d = sub.add_parser("download", help="fetch CIFAR-100 and ImageNet weights once, for offline rooms")
    d.add_argument("--root", help="data folder (default $CIFAR_TL_DATA or ~/.cache/cifar_tl)")
    d.add_argument("--backbone", action="append", choices=list(BACKBONES), metavar="NAME",
                   help="weights to fetch (repeatable; default efficientnet_v2_s)")
    return p


def _overrides(a) -> dict:
    """The Config fields given on the command line."""
    fields = set(Config.__dataclass_fields__) - {"profile"}
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


def _run(a) -> int:
    from . import pipeline

    if "resume" in a:
        given = set(vars(a)) - {"command", "resume"}
        fixed = sorted(given - set(RESUME_OPTIONS))
        if fixed:
            raise ConfigError(f"--resume continues {a.resume} with the settings it was started with; drop "
                              f"{', '.join(map(_flag, fixed))} (only {', '.join(map(_flag, RESUME_OPTIONS))} "
                              "may be given)")
        pipeline.run(None, a.resume, resume=True, **{k: getattr(a, k) for k in given})
        return 0
    try:
        cfg = Config.for_profile(getattr(a, "profile", None)).replace(**_overrides(a))
    except ConfigError as e:
        env = os.environ.get("CIFAR_TL_PROFILE")
        raise ConfigError(f"{e} (from $CIFAR_TL_PROFILE)" if "profile" not in a and env else str(e)) from None
    out = getattr(a, "out", None) or _default_out()
    pipeline.run(cfg, out, overwrite="overwrite" in a)
    return 0


def _evaluate(a) -> int:
    from . import inference

    o = _overrides(a)
    if "profile" in a:
        profile = Config.for_profile(a.profile)
        o = {**{k: getattr(profile, k) for k in EVALUATE_PROFILE_FIELDS}, **o}
    m = inference.evaluate_checkpoint(a.checkpoint, **o)
    print(f"test accuracy {m['test_accuracy']:.4f}, top-5 {m['test_top5']:.4f} on {m['n_test']} images ({m['source']})")
    return 0


def _predict(a) -> int:
    from . import inference

    failed = 0
    for path, result in inference.predict_files(a.checkpoint, a.images, device=a.device):
        if isinstance(result, str):
            print(f"error: {one_line(result, 2000)}", file=sys.stderr)
            failed += 1
            continue
        print(path)
        for name, prob in result:
            print(f"  {prob:7.2%}  {name}")
    return 1 if failed else 0


def _download(a) -> int:
    from . import data
    from .config import default_data_root
    from .models import build_backbone, weights_file

    root = Path(a.root or default_data_root())
    for train in (True, False):
        data.cifar100(root / "cifar100", train=train, download=True)
    print(f"CIFAR-100 is in {root / 'cifar100'}")
    for name in a.backbone or ["efficientnet_v2_s"]:
        build_backbone(name, "imagenet")
        print(f"{name} ImageNet weights are in {weights_file(name)}")
    print("offline classroom: copy both folders to each machine (or set CIFAR_TL_DATA and TORCH_HOME)")
    return 0


def _sigterm(signum, frame):
    """SIGTERM (a closed Colab tab, `kill`) stops a job like Ctrl-C: completed epochs are kept."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command; a known failure is one line on stderr: exit 2 for bad arguments, else 1."""
    args = build_parser().parse_args(argv)
    handler = {"run": _run, "evaluate": _evaluate, "predict": _predict, "download": _download}[args.command]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if in_main_thread else None
    try:
        return handler(args)
    except ConfigError as e:
        print(f"python -m cifar_tl {args.command}: error: {one_line(e, 2000)}", file=sys.stderr)
        return 2
    except CifarTLError as e:
        print(f"error: {one_line(e, 2000)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # run turns it into Interrupted; this is evaluate, predict, download
        print(f"error: interrupted: {args.command} did not finish; run it again", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `predict ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
