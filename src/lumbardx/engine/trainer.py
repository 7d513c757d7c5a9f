"""The training loop: ``train(model, train_set, val_set, recipe, out_dir, ...)``.

One epoch: for every batch, set lr / momentum (:mod:`~lumbardx.engine.schedule`), pick the
multi-scale size, forward under autocast (CUDA), back-propagate ``loss_dict["loss"]`` (scaled by
a GradScaler for fp16), and every ``accumulate`` batches (and at the end of the epoch) unscale,
clip the gradient norm, step SGD and update the EMA. After the epoch rank 0 evaluates the EMA
weights on ``val_set`` (mAP@0.5 is the fitness), writes ``results.csv``, ``last.pt`` and, when
the fitness improves, ``best.pt`` (:mod:`~lumbardx.engine.checkpoint`).

Batches come from DataLoader workers running the CPU pipeline, or, with ``recipe.pipeline ==
"device"``, from the training set held on the device (:mod:`~lumbardx.engine.device_loader`).
On CUDA the model and its input are channels-last (with the recipe's bf16 autocast).

Exact resume: sampling, augmentation and multi-scale sizes are functions of ``(seed, epoch,
position)``, and the checkpoint holds model, EMA, optimiser, schedule, scaler, counters and
RNG states, so ``train(..., resume=True)`` after an interruption ends with the same weights as
an uninterrupted run (bitwise on CPU with ``num_workers=0``).

Multi-GPU: launch with ``torchrun --nproc_per_node=N``; the model is wrapped in
``DistributedDataParallel``, each process reads its share through the sampler, and only rank 0
evaluates, prints and writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lumbardx.data.boxes import Sample
from lumbardx.data.errors import InputError
from lumbardx.engine import distributed as D
from lumbardx.engine.checkpoint import (
    LoadReport,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lumbardx.engine.device_loader import DeviceTrainLoader
from lumbardx.engine.ema import ModelEMA, unwrap
from lumbardx.engine.evaluate import EvalResult, evaluate
from lumbardx.engine.loader import (
    build_train_loader,
    multiscale_size,
    set_loader_epoch,
    to_model_input,
)
from lumbardx.engine.optim import build_optimizer
from lumbardx.engine.pipeline import sample_arrays
from lumbardx.engine.recipes import Recipe
from lumbardx import __version__
from lumbardx.engine.reporting import ResultsCsv, format_losses, make_progress
from lumbardx.engine.schedule import WarmupSchedule

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        out_dir: the run folder.
        last: ``last.pt``; best: ``best.pt`` (``None`` when no epoch was evaluated).
        best_map50: best validation mAP@0.5 (``nan`` without validation).
        epochs_done: epochs finished in total (including those before a resume; fewer than
            ``recipe.epochs`` when ``recipe.time_limit_s`` stopped the run).
        history: the rows of ``results.csv`` written by this call.
        final_eval: evaluation of the best weights with figures (``out_dir / "eval"``).
        weights_report: what ``weights=`` loaded and skipped.
        skipped: training samples that could not be used (image id -> problem).
    """

    out_dir: Path
    last: Path
    best: Path | None
    best_map50: float
    epochs_done: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_eval: EvalResult | None = None
    weights_report: LoadReport | None = None
    skipped: dict[str, str] = field(default_factory=dict)


class _Subset(Sequence[Sample]):
    """The usable samples of a dataset (keeps ``class_names``)."""

    def __init__(self, base: Sequence[Sample], indices: list[int]) -> None:
        self.base, self.indices = base, indices
        self.class_names = list(getattr(base, "class_names"))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        return self.base[self.indices[i]]


def usable_samples(
    dataset: Sequence[Sample],
) -> tuple[_Subset, dict[str, str], list[np.ndarray], int]:
    """Read every sample once; return the usable ones, ``{image id: problem}`` of the rest,
    the class indices ``int64 [K_i]`` of each usable sample and how many ignored regions
    (:attr:`~lumbardx.data.boxes.Sample.ignore`) the usable ones hold."""
    keep, skipped, labels, ignored = [], {}, [], 0
    for i in range(len(dataset)):
        try:
            sample = dataset[i]
            labels.append(sample_arrays(sample)[2])
            keep.append(i)
            ignored += 0 if sample.ignore is None else len(sample.ignore)
        except InputError as exc:
            skipped[str(exc.path) if exc.path else f"#{i}"] = exc.problem
    return _Subset(dataset, keep), skipped, labels, ignored


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: str) -> tuple[Any, bool]:
    """The autocast context of the recipe and whether a GradScaler is needed (fp16)."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext, False
    dtype = torch.bfloat16 if amp == "bf16" and torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    model: nn.Module,
    train_set: Sequence[Sample],
    val_set: Sequence[Sample] | None,
    recipe: Recipe,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    resume: bool | Path = False,
    weights: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    final_eval: bool = True,
) -> TrainResult:
    """Train ``model`` (a :class:`~lumbardx.models.detector.Detector`) with ``recipe``.

    Args:
        train_set, val_set: sequences of :class:`~lumbardx.data.boxes.Sample` with
            ``class_names``; ``val_set=None`` skips validation (``best.pt`` is then not written).
        out_dir: run folder for ``last.pt``, ``best.pt``, ``results.csv`` and ``eval/``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; under ``torchrun`` each process uses
            ``cuda:LOCAL_RANK``.
        resume: ``True`` continues from ``out_dir / "last.pt"``, a path from that file.
        weights: a local checkpoint to start from (ignored when resuming); tensors whose name
            and shape match are loaded, the rest reported in ``TrainResult.weights_report``.
        seed: seed of initial RNGs, sampling, augmentation and multi-scale sizes.
        progress: show Rich progress bars (rank 0 only).
        on_epoch_end: called on rank 0 with the ``results.csv`` row after ``last.pt`` is saved.
        final_eval: evaluate the best weights with figures into ``out_dir / "eval"`` at the end.

    Raises:
        InputError: no usable training sample, or an unreadable ``resume`` / ``weights`` file.
        FloatingPointError: the loss became NaN / inf (usually an lr too high for the batch).
    """
    info = D.setup(_resolve_device(device))
    dev = info.device
    out = Path(out_dir)
    console = Console(quiet=not (progress and info.is_main))
    seed_everything(seed + info.rank)
    names = list(getattr(train_set, "class_names"))
    train_data, skipped, labels, ignored = usable_samples(train_set)
    for key, problem in skipped.items():
        log.warning("skipping training sample %s: %s", key, problem)
        console.print(f"[yellow]skipping training sample {key}: {problem}")
    if len(train_data) == 0:
        raise InputError(None, "no usable training sample")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    ckpt = None
    if resume:
        path = out / "last.pt" if resume is True else Path(resume)
        ckpt = load_checkpoint(path)
        console.print(f"resuming from {path} (epoch {ckpt['epoch'] + 1} done)")
    report = None
    if weights is not None and ckpt is None:
        report = load_weights(unwrap(model), weights)
        log.info(report.summary())
        console.print(report.summary())
        for k, (a, b) in report.shape_mismatch.items():
            console.print(f"  skipped {k}: checkpoint {a} vs model {b}")

    loss = getattr(unwrap(model), "loss", None)
    if hasattr(loss, "shared_labels"):
        loss.shared_labels = recipe.shared_labels
    elif recipe.shared_labels != "reference":
        raise InputError(None, f"recipe shared_labels={recipe.shared_labels!r} needs a loss "
                               f"that supports it (YOLOv5), not {type(loss).__name__}")
    if ignored and (not getattr(loss, "supports_ignore", False) or recipe.pipeline == "device"):
        raise InputError(None, f"the training set holds {ignored} ignored regions (e.g. "
                               "--classes study+ddd-ignore): they need the YOLOv5 loss and the "
                               f"host pipeline, not {type(loss).__name__} with pipeline="
                               f"{recipe.pipeline!r}")
    model.to(dev)
    optimizer = build_optimizer(model, recipe, info.world_size)
    if recipe.pipeline == "device":
        loader: Any = DeviceTrainLoader(train_data, recipe, seed, dev, info.rank,
                                        info.world_size, num_classes=len(names), labels=labels)
    else:
        loader = build_train_loader(train_data, recipe, seed, info.rank, info.world_size,
                                    pin_memory=dev.type == "cuda", num_classes=len(names),
                                    labels=labels)
    channels_last = dev.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    schedule = WarmupSchedule(optimizer, recipe, len(loader))
    ema = None if recipe.ema == "none" else ModelEMA(model, recipe.ema, recipe.ema_decay,
                                                     recipe.ema_tau)
    autocast, use_scaler = _autocast(dev, recipe.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_epoch, step, best = 0, 0, -math.inf
    results = ResultsCsv(out / "results.csv")
    if ckpt is not None:
        unwrap(model).load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]) + 1, int(ckpt["step"])
        best = float(ckpt["best_fitness"])
        set_rng_state(ckpt["rng"])
        if info.is_main:
            results.truncate_after(int(ckpt["epoch"]))
    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    accumulate = recipe.accumulate(info.world_size)
    history: list[dict[str, Any]] = []
    bar = make_progress(console, enabled=progress and info.is_main)
    params = [p for p in model.parameters() if p.requires_grad]

    def optimizer_step() -> None:
        if recipe.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)

    started = time.perf_counter()
    epochs_done = recipe.epochs
    with bar:
        for epoch in range(start_epoch, recipe.epochs):
            t0 = time.perf_counter()
            set_loader_epoch(loader, epoch, seed)
            net.train()
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            pending, n_batches = 0, 0
            task = bar.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=len(loader), losses="")
            for i, (images, targets) in enumerate(loader):
                schedule.step(step, epoch)
                x, t = to_model_input(images, targets, dev, multiscale_size(recipe, seed, epoch, i))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync = pending + 1 >= accumulate
                ctx = net.no_sync() if info.distributed and not sync else contextlib.nullcontext()
                with ctx:
                    with autocast():
                        losses = net(x, t)
                    loss = losses["loss"]
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}: lower "
                            f"lr0 ({recipe.lr0:g}) or check the labels")
                    scaler.scale(loss).backward()
                pending += 1
                if pending >= accumulate:
                    optimizer_step()
                    pending = 0
                step += 1
                n_batches += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.update(task, advance=1, losses=format_losses(
                    {k: v / n_batches for k, v in sums.items()}))
            if pending:
                optimizer_step()
            bar.remove_task(task)
            row: dict[str, Any] = {"epoch": epoch, "step": step,
                                   "lr": optimizer.param_groups[-1]["lr"]}
            row.update({f"train/{k}": v / max(n_batches, 1) for k, v in sums.items()})
            fitness = None
            out_of_time = (recipe.time_limit_s is not None
                           and D.broadcast_flag(info, time.perf_counter() - started
                                                > recipe.time_limit_s))
            evaluate_now = ((epoch + 1) % recipe.eval_interval == 0
                            or epoch + 1 == recipe.epochs or out_of_time)
            if info.is_main and val_set is not None and evaluate_now:
                res = evaluate(ema.ema if ema is not None else unwrap(model), val_set, dev,
                               recipe.image_size, recipe.batch_size, names,
                               pad_value=recipe.augment.pad_value)
                fitness = res.map50 if math.isfinite(res.map50) else 0.0
                row.update({"val/map50": res.map50, "val/map50_95": res.map50_95})
                row.update({f"val/ap50/{k}": v for k, v in res.ap50.items()})
                row["val/ms_per_image"] = res.ms_per_image
            row["time_s"] = time.perf_counter() - t0
            if info.is_main:
                improved = fitness is not None and fitness > best
                best = fitness if improved else best
                state = _state(model, ema, optimizer, schedule, scaler, epoch, step, best,
                               recipe, names, seed)
                save_checkpoint(state, out / "last.pt")
                if improved:
                    save_checkpoint(state, out / "best.pt")
                results.append(row)
                history.append(row)
                console.print(f"epoch {epoch + 1}/{recipe.epochs} " + " ".join(
                    f"{k}={v:.4g}" for k, v in row.items()
                    if isinstance(v, float) and k != "lr"))
                if on_epoch_end is not None:
                    on_epoch_end(row)
            D.barrier(info)
            if out_of_time:
                epochs_done = epoch + 1
                console.print(f"time limit of {recipe.time_limit_s:g} s reached: stopped after "
                              f"epoch {epochs_done} of {recipe.epochs}")
                log.warning("time limit reached: stopped after epoch %d of %d", epochs_done,
                            recipe.epochs)
                break

    result = TrainResult(out, out / "last.pt", (out / "best.pt") if (out / "best.pt").is_file()
                         else None, best if math.isfinite(best) else float("nan"),
                         epochs_done, history, None, report, skipped)
    if info.is_main and final_eval and val_set is not None and result.best is not None:
        final = load_checkpoint(result.best)
        target = ema.ema if ema is not None else unwrap(model)
        target.load_state_dict(final["ema"]["model"] if final.get("ema") else final["model"])
        result.final_eval = evaluate(target, val_set, dev, recipe.image_size, recipe.batch_size,
                                     names, out_dir=out / "eval",
                                     pad_value=recipe.augment.pad_value)
    D.barrier(info)
    D.cleanup(info)
    return result


def _state(
    model: nn.Module,
    ema: ModelEMA | None,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupSchedule,
    scaler: torch.amp.GradScaler,
    epoch: int,
    step: int,
    best: float,
    recipe: Recipe,
    names: list[str],
    seed: int,
) -> dict[str, Any]:
    """The checkpoint dict (keys listed in :mod:`lumbardx.engine.checkpoint`)."""
    bare = unwrap(model)
    return {
        "model": bare.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_fitness": best,
        "rng": rng_state(),
        "sampler": {"seed": seed, "next_epoch": epoch + 1},
        "recipe": recipe.to_dict(),
        "model_name": getattr(bare, "name", ""),
        "num_classes": len(names),
        "class_names": names,
        "seed": seed,
        "lumbardx_version": __version__,
    }
