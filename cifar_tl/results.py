"""What a run leaves behind: the files written after each epoch (state, checkpoint, history) with
one line said, and at the end metrics.json, the final head.pt or model.pt and the plots."""

from __future__ import annotations

import logging
from pathlib import Path

from . import checkpoint, finetune, runs, viz
from .errors import one_line
from .models import count_parameters

log = logging.getLogger(__name__)


def head_meta(r: runs.Run) -> dict:
    """What a checkpoint says about the data beside the weights: class names and superclasses, and
    the fingerprint of the backbone the head was trained on."""
    ds = r.train_ds
    return dict(class_names=ds.classes, coarse_classes=getattr(ds, "coarse_classes", None),
                fine_to_coarse=getattr(ds, "fine_to_coarse", None), backbone_fingerprint=r.fingerprint)


def save_epoch(r: runs.Run, row: dict, optimizer, fine_tuned: bool = False) -> None:
    """After an epoch: state.pt (to resume), the checkpoint (head.pt, or model.pt once the backbone
    fine-tunes) and history.json, written together (signals wait), then one line said."""
    model, cfg = r.model, r.cfg
    with runs.signals_deferred():
        rows = [*r.history, row]
        state = {"format": runs.STATE_FORMAT, "config": cfg.to_dict(), "history": rows,
                 "head": model.head.state_dict(), "optimizer": optimizer.state_dict()}
        if fine_tuned:
            state.update(phase="fine-tune", backbone=finetune.trained_state(model.backbone))
        r.write("state.pt", state)
        if fine_tuned:
            finetune.save_model(r.out / "model.pt", model, config=cfg, metrics=row, **head_meta(r))
        else:
            checkpoint.save_head(r.out / "head.pt", model.head, config=cfg, metrics=row, **head_meta(r))
        r.record("model.pt" if fine_tuned else "head.pt")
        r.write("history.json", rows, "json")
        r.history.append(row)
    say_epoch(row, len(r.history), cfg.total_epochs())


def say_epoch(row: dict, done: int, total: int) -> None:
    """One line per epoch: training loss and accuracy, and the validation accuracy (never test)."""
    val = f"; validation accuracy {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
    log.info("epoch %d/%d: train loss %.4f, accuracy %.4f%s", done, total, row["train_loss"],
             row["train_accuracy"], val)


def training_facts(r: runs.Run) -> dict:
    """Trainable and frozen parameters, the learning rate of each parameter group, and the
    fine-tuning throughput, for metrics.json."""
    params = count_parameters(r.model)
    facts = {"trainable_params": params["trainable"], "frozen_params": params["frozen"],
             "lr_groups": {g.get("name", "head"): g.get("base_lr", g["lr"]) for g in r.optimizer.param_groups}}
    last = next((row for row in reversed(r.history) if row.get("phase") == "fine-tune"), None)
    if last is not None:
        facts.update(images_per_second=last["images_per_second"], fine_tune_batch_size=last["batch_size"])
    return facts


def report(r: runs.Run, ev) -> dict:
    """metrics.json, the final head.pt and history.json, and the plots."""
    cfg = r.cfg
    if r.store is not None:  # read now: views extracted on demand during training count too
        r.cache_info["train"] = r.store.info
    last = r.history[-1] if r.history else {}
    metrics = {
        "val_accuracy": last.get("val_accuracy"),
        "val_top5": last.get("val_top5"),
        "val_loss": last.get("val_loss"),
        "n_val": len(r.val_ds) if r.val_ds is not None else 0,
        "test_accuracy": ev.accuracy,
        "test_top5": ev.top5,
        "test_loss": ev.loss,
        "n_test": ev.n,
        "n_train": len(r.train_ds),
        "epochs": len(r.history),
        "seconds": r.seconds,
        **training_facts(r),
        "device": str(r.device),
        **r.backbone_run,
        "cache": r.cache_info,
        "config": cfg.to_dict(),
    }
    if cfg.unfreeze:  # the head alone would be wrong for the fine-tuned backbone
        finetune.save_model(r.out / "model.pt", r.model, config=cfg, metrics=metrics, **head_meta(r))
        r.record("model.pt")
        (r.out / "head.pt").unlink(missing_ok=True)
    else:
        checkpoint.save_head(r.out / "head.pt", r.model.head, config=cfg, metrics=metrics, **head_meta(r))
        r.record("head.pt")
    r.write("history.json", r.history, "json")
    r.write("metrics.json", metrics, "json")
    try:
        for path in viz.save_report(r.out, r.history, ev, r.train_ds):
            r.record(Path(path).name)
    except Exception as e:  # the plots are a convenience: the results are already on disk
        log.warning("note: could not draw the plots (%s: %s)", e.__class__.__name__, one_line(e, 100))
    top5 = f" (top-5 {ev.top5:.4f})" if ev.top5 is not None else ""
    log.info("test accuracy %.4f%s on %d test images (evaluated once, after training); %.1f s; wrote %s",
             ev.accuracy, top5, ev.n, r.seconds["total"], r.out)
    return metrics


