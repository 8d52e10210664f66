"""The training loop: plain PyTorch, every part visible (schedule, accumulation, clipping, eval, checkpoints).

Used by every trained method (PPlug, task LoRA, OPPU): the method supplies a loss over a batch of
examples and an evaluation callback; this loop owns optimization, progress, best-checkpoint keeping
and resume.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pplug import distributed
from pplug.progress import enabled as progress_enabled


@dataclass
class TrainConfig:
    epochs: int | None = None  # passes over the (augmented) training examples (paper: 2; 1 for rating); None = per
    # task kind (pplug/kind_defaults.py: classification 3, rating 1, generation 2)
    lr: float = 1e-3  # peak AdamW lr (paper: 1e-4 on FlanT5-XXL; 1e-3 is stable here with normalized soft tokens)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup: float = 0.05  # fraction of steps with linear warmup, then linear decay to 0
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    processes: int = 1  # data-parallel processes; global batch = batch_size x grad_accum x processes
    clip: float = 1.0  # max global grad norm (0 = off)
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs)
    limit: int | None = None  # use only the first N training questions (before augmentation)
    dev_limit: int | None = None  # evaluate on only the first N dev questions each epoch
    select_on_dev: bool = True  # evaluate on dev after each epoch and keep the best epoch (else keep the last)
    seed: int = 0  # seeds shuffling, augmentation and initialization
    augment_copies: int = 10  # history augmentation: extra copies per example with > 2 items (0 = off)
    augment_max_drop: float = 0.5  # each copy drops a random 1..max_drop share of the items
    bucket: int | None = None  # length bucketing: sort each window of bucket x batch_size shuffled examples by
    # length (0 = off; None = per task kind, pplug/kind_defaults.py: 4 for label tasks, off for generation)
    kv_memo_mb: int = 1024  # plug.placement=after_text: keep each question's frozen KV while training (MB cap; 0 = off)
    class_balanced: bool = False  # classification: weight each example by inverse frequency of its label
    swap_contrast: float = 0.0  # PPlug: weight of a hinge loss asking each gold output to be likelier with its own
    # user's history than with another user's of the batch (0 = off; a second forward pass: ~2x step cost)
    swap_margin: float = 0.1  # that loss's margin, in nats of per-token loss (own must beat another's by this;
    # news_headline dev: .1 made the swap drop 17.6%, .5 never closed and changed nothing: README "Generation")
    progress: bool = True  # show a progress bar with loss and ETA


@dataclass
class TrainResult:
    steps: int = 0
    epochs_done: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup * total`` steps, then linear decay to 0."""
    warm = max(1, int(math.ceil(warmup * total)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return f


def bucketed(order: list[int], lengths: list[int], batch_size: int, window: int, seed: int) -> list[list[int]]:
    """Micro-batches of similar length: each window of ``window * batch_size`` indices (in ``order``) is
    sorted by length and cut into batches; the batches are then shuffled (every index appears once)."""
    span = window * batch_size
    batches = []
    for w in range(0, len(order), span):
        chunk = sorted(order[w:w + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def train_loop(params: Sequence[torch.nn.Parameter], loss_fn: Callable[[list[Any]], torch.Tensor],
               examples: Sequence[Any], config: TrainConfig, *,
               evaluate: Callable[[], float] | None = None, higher_is_better: bool = True,
               on_best: Callable[[], None] | None = None, checkpoint: Path | None = None,
               state: Callable[[], dict[str, torch.Tensor]] | None = None,
               load_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
               train_mode: Callable[[bool], None] | None = None, desc: str = "train",
               length: Callable[[Any], int] | None = None) -> TrainResult:
    """Optimize ``params`` to minimize ``loss_fn`` over ``examples``.

    Args:
        params: the trainable parameters (everything else must already be frozen).
        loss_fn: maps a list of examples (a micro-batch) to a scalar loss.
        examples: the training examples (already augmented).
        config: optimization settings.
        evaluate: returns the dev score after each epoch; the best epoch triggers ``on_best``.
        checkpoint: a file for resume (trainable state, optimizer, scheduler, epoch); resumed if present.
        state / load_state: get/set the trainable state dict (for the checkpoint).
        train_mode: switches dropout etc. on (True) / off (False) around evaluation.
        length: an example's length, for ``config.bucket`` (bucketing is off without it).

    Returns:
        TrainResult with per-epoch loss, dev score and timing.

    With ``config.processes`` > 1 (inside a launched process group, see `pplug.distributed`) each optimizer
    step shares ``grad_accum x processes`` micro-batches among the ranks; rank 0 alone evaluates, calls
    ``on_best`` and writes the checkpoint.
    """
    params = [p for p in params if p.requires_grad]
    world = distributed.training_world(config.processes)
    span = config.grad_accum * world.size  # micro-batches per optimizer step, over all processes
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(examples) / config.batch_size / span)
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(max(total, 1), config.warmup))
    result, start_epoch = TrainResult(), 0
    if checkpoint is not None and checkpoint.is_file() and load_state is not None:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors/plain values, no pickles
        load_state(ck["trainable"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        result = TrainResult(**ck["result"])
        start_epoch = result.epochs_done
    t0 = time.perf_counter() - result.seconds
    parallel = distributed.DataParallelStep(params, loss_fn, world)  # after resume: rank 0's weights go to all
    bar = tqdm(total=total, initial=result.steps, desc=desc, disable=not (config.progress and progress_enabled()),
               dynamic_ncols=True)
    for epoch in range(start_epoch, config.epochs):
        if result.steps >= total:
            break
        order = list(range(len(examples)))
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        if train_mode:
            train_mode(True)
        losses: list[float] = []
        micro = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        if (config.bucket or 0) > 0 and length is not None:
            micro = bucketed(order, [length(e) for e in examples], config.batch_size, config.bucket,
                             config.seed * 1000 + epoch)
        for i in range(0, len(micro), span):
            step_loss = parallel.backward([[examples[j] for j in idx] for idx in micro[i:i + span]])
            if config.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            result.steps += 1
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if result.steps >= total:
                break
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": result.steps,
                               "train_loss": sum(losses) / max(1, len(losses))}
        if evaluate is not None:
            if train_mode:
                train_mode(False)
            score = distributed.on_main(world, evaluate)
            row["dev_score"] = score
            better = result.best_score is None or (score > result.best_score if higher_is_better
                                                   else score < result.best_score)
            if better:
                result.best_score, result.best_epoch = score, epoch + 1
                if on_best and world.main:
                    on_best()
        elif on_best:
            result.best_epoch = epoch + 1
            if world.main:
                on_best()
        result.epochs_done = epoch + 1
        result.seconds = time.perf_counter() - t0
        row["seconds"] = round(result.seconds, 2)
        result.history.append(row)
        if progress_enabled():  # the epoch summary goes to stderr: stdout carries only results
            bar.write(f"[{desc}] " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in row.items()), file=sys.stderr)
        if checkpoint is not None and state is not None and world.main:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"trainable": state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "result": asdict(result)}, tmp)
            tmp.replace(checkpoint)
    bar.close()
    distributed.barrier(world)  # rank 0's files (best weights) exist before any rank reads them
    result.seconds = time.perf_counter() - t0
    return result
