"""The training loop: epochs of SGD/Adam steps with a progress bar, evaluation on the test
set after each epoch, metrics.json, curves.png, model.npz and resumable checkpoints.

    history = fit(model, optimizer, train_loader, test_loader, epochs=10, out_dir="runs/x")

``python -m gpumat train`` (gpumat/nn/cli.py) builds the model, data and optimizer from the
command line and calls ``fit``.  Loss and accuracy are summed on the device and read back
only when the progress bar is redrawn, so a GPU backend is not stalled every step.
Ctrl-C saves a checkpoint of the current weights before exiting; resuming from it restarts
the interrupted epoch from its beginning with those weights (an epoch counts as done, with its
scheduler step and history entry, only once it has been evaluated).
"""
import json
import math
import os
import sys
import time

import gpumat as gm

from . import functional as F
from .autograd import no_grad
from .serialization import load_checkpoint, save, save_checkpoint

__all__ = ["fit", "evaluate", "Progress", "TrainingInterrupted", "TrainingDiverged"]

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
MODEL = "model.npz"
CURVES = "curves.png"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``; ``checkpoint`` is the file the state was saved to (or None)."""

    def __init__(self, checkpoint):
        super().__init__(f"training interrupted; state saved to {checkpoint}"
                         if checkpoint else "training interrupted")
        self.checkpoint = checkpoint


class Progress:
    """A one-line progress bar: redrawn in place on a terminal, else printed every
    ``1 / lines`` of the way (logs and CI keep a few lines per epoch, not thousands)."""

    def __init__(self, total, label, stream=None, width=24, lines=5, min_interval=0.25):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, -(-self.total // lines))
        self.min_interval = min_interval
        self.last_draw = 0.0
        self.start = time.perf_counter()

    def due(self, done):
        """Whether ``update(done, ...)`` would draw (so the caller reads metrics only then)."""
        if done >= self.total:
            return True
        if self.tty:
            return time.perf_counter() - self.last_draw >= self.min_interval
        return done % self.every == 0

    def update(self, done, text):
        self.last_draw = time.perf_counter()
        filled = int(self.width * done / self.total)
        bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
        line = f"{self.label} [{bar[:self.width]}] {done}/{self.total} {text}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def evaluate(model, loader):
    """Mean cross-entropy loss and top-1 / top-5 accuracy of ``model`` on ``loader`` (eval
    mode, no graph); the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    loss_sum = hits1 = hits5 = None
    count = 0
    try:
        with no_grad():
            for x, y in loader:
                logits = model(x)
                batch_loss = F.cross_entropy(logits, y, reduction="sum").data
                h1, h5 = F.topk_hits(logits, y, 1), F.topk_hits(logits, y, 5)
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                hits1 = h1 if hits1 is None else hits1 + h1
                hits5 = h5 if hits5 is None else hits5 + h5
                count += x.shape[0]
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": float(loss_sum.item()) / count, "top1": int(hits1.item()) / count,
            "top5": int(hits5.item()) / count, "samples": count}


def _train_epoch(model, optimizer, loader, progress, label_smoothing):
    model.train()
    loss_sum = hits = None
    count = 0
    started = time.perf_counter()
    for step, (x, y) in enumerate(loader, 1):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        batch = x.shape[0]
        batch_hits = F.topk_hits(logits.data, y, 1)
        batch_loss = loss.data * batch
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        hits = batch_hits if hits is None else hits + batch_hits
        count += batch
        if progress.due(step):
            seconds = time.perf_counter() - started
            _check_finite(float(loss_sum.item()), step, optimizer)
            progress.update(step, f"loss {float(loss_sum.item()) / count:.4f} "
                                  f"acc {100 * int(hits.item()) / count:5.2f}% "
                                  f"{count / max(seconds, 1e-9):,.0f} img/s")
    if not count:
        raise ValueError("fit: the training loader yielded no samples")
    loss_value, top1 = float(loss_sum.item()) / count, int(hits.item()) / count
    seconds = time.perf_counter() - started
    return {"train_loss": loss_value, "train_top1": top1, "images_per_second": count / seconds,
            "train_seconds": seconds}


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def _check_finite(loss_sum, step, optimizer):
    if not math.isfinite(loss_sum):
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(f"the training loss became {loss_sum} by step {step} of the "
                               f"epoch (learning rate {lr:g}): the model diverged; lower "
                               f"--lr, or resume from the last checkpoint with a lower one")


def _write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def plot_curves(history, path, title=None):
    """Loss and accuracy per epoch as a PNG; returns False (with a warning, once) when
    matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        gm.backends.warn_once("train-plot", f"curves.png not written: matplotlib is not "
                                            f"installed ({exc}); pip install matplotlib")
        return False
    epochs = [e["epoch"] for e in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [e["train_loss"] for e in history], "o-", label="train")
    left.plot(epochs, [e["test_loss"] for e in history], "s-", label="test")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy loss")
    left.legend()
    right.plot(epochs, [100 * e["train_top1"] for e in history], "o-", label="train top-1")
    right.plot(epochs, [100 * e["test_top1"] for e in history], "s-", label="test top-1")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def fit(model, optimizer, train_loader, test_loader, epochs, scheduler=None, out_dir=None,
        resume=None, label_smoothing=0.0, info=None, stream=None, lr=None, seed=None):
    """Train for ``epochs`` epochs (counting those a resumed checkpoint already did) and
    evaluate after each.  With ``out_dir``: metrics.json (``info`` plus one entry per epoch),
    model.npz, checkpoint.npz and curves.png are rewritten after every epoch.  ``resume`` is
    a checkpoint path to continue from; it brings back the learning rate and seed it was
    trained with, which ``lr`` and ``seed`` (only with ``resume``) replace: lr becomes the
    schedule's base, which goes on from the step it reached; a seed other than the
    checkpoint's reseeds the loader and gpumat's generator.  A checkpoint that already holds
    ``epochs`` epochs trains nothing and rewrites out_dir's files from it.  Returns the
    per-epoch history."""
    if resume is None and (lr is not None or seed is not None):
        raise ValueError("fit: lr and seed replace a resumed checkpoint's; without resume, "
                         "give them to the optimizer and the loader")
    stream = stream or sys.stdout
    history, start = [], 0
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer, scheduler, loader=train_loader)
        start = int(state["epoch"])
        history = list(state["extra"].get("history", []))
        _continue_with(optimizer, scheduler, train_loader, lr, seed)
        print(f"resumed from {resume}: {start} epoch(s) done, continuing at learning rate "
              f"{optimizer.param_groups[0]['lr']:g}", file=stream)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    if resume is not None and start >= epochs:
        written = out_dir is not None and bool(history)
        if written:
            _save_epoch(out_dir, model, optimizer, scheduler, train_loader, start, history, info)
        print(f"nothing left to train: the checkpoint holds {start} epoch(s) of the {epochs} "
              f"asked for (ask for more to train on)"
              + (f"; its model, metrics and curves written to {out_dir}/" if written else ""),
              file=stream)
        return history
    checkpoint = os.path.join(out_dir, CHECKPOINT) if out_dir is not None else None
    # What an unfinished epoch undoes on Ctrl-C, so that the checkpoint is consistent: the
    # loader's state (the epoch replays), the scheduler's and the history's length.
    done = epoch = start
    rollback = None
    try:
        for epoch in range(start, epochs):
            rollback = (_loader_state(train_loader), _scheduler_state(scheduler), len(history))
            progress = Progress(len(train_loader), f"epoch {epoch + 1}/{epochs}", stream)
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            record.update(_train_epoch(model, optimizer, train_loader, progress,
                                       label_smoothing))
            test = evaluate(model, test_loader)
            record.update(test_loss=test["loss"], test_top1=test["top1"],
                          test_top5=test["top5"],
                          device_bytes_in_use=gm.memory_info(model_backend(model))[
                              "bytes_in_use"])
            if scheduler is not None:
                scheduler.step()
            history.append(record)
            done = epoch + 1                # the epoch is done: a Ctrl-C from here keeps it
            print(f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, "
                  f"test loss {test['loss']:.4f}, test top-1 {100 * test['top1']:.2f}% "
                  f"(top-5 {100 * test['top5']:.2f}%), "
                  f"{record['images_per_second']:,.0f} img/s", file=stream)
            if out_dir is not None:
                _save_epoch(out_dir, model, optimizer, scheduler, train_loader, done,
                            history, info)
    except KeyboardInterrupt:
        finished = done > epoch
        if not finished and rollback is not None:
            loader_state, scheduler_state, kept = rollback
            if loader_state is not None:
                train_loader.load_state_dict(loader_state)
            if scheduler_state is not None:
                scheduler.load_state_dict(scheduler_state)
            del history[kept:]
        saved = None
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, epoch=done,
                            extra={"history": history, "interrupted": True},
                            loader=train_loader)
            saved = checkpoint
        then = f"continues after epoch {done}" if finished else f"restarts epoch {done + 1}"
        print(f"\ninterrupted {'after' if finished else 'in'} epoch {epoch + 1}"
              + (f"; checkpoint saved to {saved} (--resume {saved} {then})" if saved else ""),
              file=stream)
        raise TrainingInterrupted(saved) from None
    return history


def _continue_with(optimizer, scheduler, loader, lr, seed):
    """Replace a restored checkpoint's learning rate and seed with the caller's (None keeps
    the checkpoint's).  ``lr`` becomes every group's lr and the schedule's base: the schedule
    goes on from the step it reached, scaled to the new base (a lower lr after a divergence
    stays lower).  A ``seed`` other than the loader's reseeds the loader (the shuffles and
    augmentation of the remaining epochs) and gpumat's generator; the same seed changes
    nothing, so the run continues exactly as it would have."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
            if "initial_lr" in group:           # a scheduler's base, saved with the groups
                group["initial_lr"] = lr
        if scheduler is not None:
            state = scheduler.state_dict()
            state["base_lrs"] = [lr] * len(state["base_lrs"])
            scheduler.load_state_dict(state)    # which sets the groups' lr for its step
    if seed is not None:
        state = loader.state_dict()
        if state["seed"] != seed:
            state["seed"] = seed
            loader.load_state_dict(state)
            gm.seed(seed)


def _scheduler_state(scheduler):
    return scheduler.state_dict() if scheduler is not None else None


def _loader_state(loader):
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def model_backend(model):
    """The backend name holding a model's parameters."""
    params = model.parameters()
    return params[0].backend if params else gm.default_backend()


def _save_epoch(out_dir, model, optimizer, scheduler, loader, epochs_done, history, info):
    save(model, os.path.join(out_dir, MODEL))
    save_checkpoint(os.path.join(out_dir, CHECKPOINT), model, optimizer, scheduler,
                    epoch=epochs_done, extra={"history": history}, loader=loader)
    metrics = dict(info or {})
    metrics["epochs"] = history
    metrics["best_test_top1"] = max(e["test_top1"] for e in history)
    _write_json(os.path.join(out_dir, METRICS), metrics)
    info = info or {}
    title = " ".join(str(info[k]) for k in ("model", "dataset") if k in info)
    if "backend" in info:
        title += f" (gpumat {info['backend']} backend)"
    plot_curves(history, os.path.join(out_dir, CURVES), title.strip() or None)
