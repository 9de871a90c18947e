"""``--weights synthetic``: a backbone pretrained on the generated source task, once per machine, cached beside torch's weights.

The offline stand-in for ImageNet weights. ``synthetic_state`` trains a backbone from scratch on
``source_task`` (192 generated classes, none of them a smoke class), deterministically from a
seed, with a progress bar, and keeps its weights in ``$TORCH_HOME/hub/checkpoints/`` under a
name that says the recipe and ends with the first digits of the file's sha256, as torch's own
weight files do. Later calls, in any process, load that file after checking the digest; a
damaged file is rebuilt with one notice. Two processes that build at once take turns on a file
lock, and the file is written atomically: neither can leave half a file.

Why resnet18 at 32 px (benchmarks/README.md, "Pretraining on generated data"): one training
step of efficientnet_v2_s costs 6.5x the CPU time of resnet18's at 32 px, so the budget of about
two minutes on a 2-core CPU trains resnet18 on ~60,000 images but efficientnet_v2_s on fewer than
10,000, too few to learn from scratch. 32 px is the images' own size (no resize).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm  # text bars: a saved notebook shows "Error displaying widget" for tqdm.auto's

from . import source_task
from .digests import weights_digest
from .errors import StorageError
from .storage import _write_atomic

try:  # POSIX; elsewhere the atomic write alone keeps the file whole
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

VERSION = 3  # of the source task and the training recipe: a change makes a new file
SEED = 0  # the seed of "synthetic": one set of weights per machine, whatever a run's --seed
# The recipe: the source images' size (also the backbone's input), images per class, epochs over
# them (one set of images, random flips), batch, AdamW with a one-cycle schedule.
RECIPE = {"image_size": 32, "n_per_class": 50, "epochs": 4, "batch_size": 64, "lr": 2e-3,
          "weight_decay": 5e-4}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # as every backbone input is normalised
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def checkpoints_dir() -> Path:
    """Where torch keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_stem(name: str, seed: int = SEED, recipe: dict | None = None) -> str:
    """The recipe in a file name: backbone, size, version, seed (and a digest of a custom recipe)."""
    recipe = recipe or RECIPE
    custom = "" if recipe == RECIPE else "-r" + hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()[:6]
    return f"cifar_tl-synthetic-{name}-{recipe['image_size']}px-v{VERSION}-seed{seed}{custom}"


def cached_file(name: str, seed: int = SEED, recipe: dict | None = None) -> Path | None:
    """The cached weights file of this recipe whose content matches its name's digest, else None.
    A file that does not match is deleted, with one notice."""
    stem = file_stem(name, seed, recipe)
    for path in sorted(checkpoints_dir().glob(f"{stem}-*.pt")):
        m = re.fullmatch(re.escape(stem) + r"-([0-9a-f]{10})\.pt", path.name)
        if m is None:
            continue
        if weights_digest(path).startswith(m.group(1)):
            return path
        log.warning("synthetic weights %s are damaged (their sha256 does not match the name): "
                    "rebuilding them", path)
        with contextlib.suppress(OSError):
            path.unlink()
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (a lock file) while the block runs; other builders wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def synthetic_state(name: str, make_extractor: Callable[[int], nn.Module], seed: int = SEED,
                    recipe: dict | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """The pretrained extractor's state_dict (no classifier), built once per machine.

    ``make_extractor(seed)`` returns a randomly initialised feature extractor of ``name`` (its
    classifier replaced by Identity, ``num_features`` set), seeded by ``seed``.
    """
    recipe = {**RECIPE, **(recipe or {})}
    path = cached_file(name, seed, recipe)
    if path is None:
        stem = file_stem(name, seed, recipe)
        with _locked(checkpoints_dir() / f".{stem}.lock"):
            path = cached_file(name, seed, recipe)  # another process may have built it meanwhile
            if path is None:
                log.info("pretraining %s on generated images (once on this machine; about 1-2 minutes "
                         "on 2 CPU cores), saved under %s", name, checkpoints_dir())
                state = train(make_extractor(seed), recipe, seed, progress)
                path = _save(state, checkpoints_dir(), stem)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the digest matched, so the file was written badly: build again
        raise StorageError(f"{path} cannot be read ({e.__class__.__name__}); delete it to rebuild it") from None


def _save(state: dict, folder: Path, stem: str) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}.pt"
    return _write_atomic(path, lambda f: f.write(data))


def train(extractor: nn.Module, recipe: dict, seed: int, progress: bool = True) -> dict[str, torch.Tensor]:
    """Train ``extractor`` and a linear classifier on the source task; return the extractor's
    state_dict. Deterministic in ``seed`` on one machine (the images, the initialisation of the
    classifier, the batches and the flips all come from it)."""
    images, labels = source_task.make_source(recipe["n_per_class"], [seed, VERSION], recipe["image_size"])
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y_all = torch.from_numpy(labels)
    n, bs, epochs = len(y_all), recipe["batch_size"], recipe["epochs"]
    steps = epochs * (n // bs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Linear(extractor.num_features, len(source_task.CLASSES))
        model = nn.Sequential(extractor, classifier).train()
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.2)
        g = torch.Generator().manual_seed(seed)
        bar = tqdm(total=steps, desc=f"pretraining {getattr(extractor, 'name', '')} on generated images".replace("  ", " "),
                   file=sys.stderr, leave=False, mininterval=1.0, disable=not progress)
        correct = seen = 0
        for _epoch in range(epochs):
            order = torch.randperm(n, generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            for i in range(n // bs):
                idx = order[i * bs:(i + 1) * bs]
                x = x_all[idx].float().div_(255)
                x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(-1), x)
                out = model((x - _MEAN) / _STD)
                loss = nn.functional.cross_entropy(out, y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                correct, seen = correct + int((out.argmax(1) == y_all[idx]).sum()), seen + len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.2f}", acc=f"{correct / seen:.2f}", refresh=False)
            correct = seen = 0
        bar.close()
    extractor.eval()
    return {k: v.detach().clone() for k, v in extractor.state_dict().items()}

