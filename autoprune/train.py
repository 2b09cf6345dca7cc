"""Training: one loop for base training and fine-tuning, and the cache of base models."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from tqdm.auto import tqdm

from autoprune.cache import CacheError, cache_folder, read_bytes, read_verified, write_atomic
from autoprune.data import DataSplits, FinetuneBudget, augment_batch
from autoprune.device import current_device
from autoprune.errors import ConfigError, DivergedError, TaskError
from autoprune.limits import MAX_BATCH, MAX_EPOCHS
from autoprune.measure import Metrics, accuracy, measure_model
from autoprune.models import ModelSpec, create_model, load_checkpoint, model_fingerprint
from autoprune.stop import stop_requested

log = logging.getLogger(__name__)

# Called after every epoch with (epoch starting at 1, validation accuracy in percent). A callback
# may raise (optuna.TrialPruned, say) to stop training.
EpochCallback = Callable[[int, float], None]
CACHE_VERSION = 3  # 3: the metadata records the state_dict's hash
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings: base training (a spec's ``[train]``), fine-tuning (a
    recipe's ``[finetune]``) and trained quantization all use this config; the seed is the
    run's, passed beside it."""

    epochs: int = 15
    lr: float = 1e-3  # peak learning rate; cosine-annealed to zero over the run
    batch_size: int = 64
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    weight_decay: float = 0.0
    max_batches: int | None = None  # cap on batches per epoch, for cheap trials
    amp: str = "off"  # mixed precision for the forward pass: "off", "bf16" or "fp16" (with loss scaling)
    # Fine-tuning only: the weight of distillation from the network before compression (its
    # softened outputs as targets, Hinton et al.) against the labels' cross-entropy; 0: labels only.
    distill: float = 0.0
    temperature: float = 4.0  # the distillation's softening temperature

    def __post_init__(self) -> None:
        if self.amp not in AMP:
            raise ConfigError(f"amp={self.amp!r} should be one of {', '.join(AMP)}")
        if not 0 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"epochs={self.epochs} should be in 0..{MAX_EPOCHS}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr} should be a positive number")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight_decay={self.weight_decay} should be a number >= 0")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"batch_size={self.batch_size} should be in 1..{MAX_BATCH}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer={self.optimizer!r} should be 'adam' or 'sgd'")
        if self.max_batches is not None and not 1 <= self.max_batches <= 10**7:
            raise ConfigError(f"max_batches={self.max_batches} should be in 1..10000000 or None")
        if not 0 <= self.distill <= 1:
            raise ConfigError(f"distill={self.distill} should be a weight in [0, 1]")
        if not (0 < self.temperature <= 100 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature={self.temperature} should be in (0, 100]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainState:
    """Where a run of :func:`fit` stopped, at an epoch's end: with the model's weights, enough
    to continue it exactly (the optimiser's moments, the schedule, the data order's and the
    augmentation's random streams). Tensors and numbers only: saved with ``torch.save`` and read
    back with ``weights_only=True``."""

    epoch: int  # epochs done
    steps: int  # optimiser steps taken
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    order: torch.Tensor  # the data-order generator's state
    augment: torch.Tensor  # the augmentation generator's state
    first_loss: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TrainState:
        """A stored state (data: checked for its fields and their types)."""
        try:
            out = cls(
                int(d["epoch"]),
                int(d["steps"]),
                dict(d["optimizer"]),
                dict(d["scheduler"]),
                d["order"],
                d["augment"],
                float(d["first_loss"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"a stored fine-tuning state is unreadable ({e})") from None
        if (
            not (isinstance(out.order, torch.Tensor) and isinstance(out.augment, torch.Tensor))
            or out.epoch < 0
        ):
            raise ConfigError("a stored fine-tuning state is unreadable (its random states are not tensors)")
        return out


def fit(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    *,
    seed: int = 0,
    callbacks: Sequence[EpochCallback] = (),
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    teacher: nn.Module | None = None,
) -> list[float]:
    """Train ``model`` in place on the training split; returns validation accuracy per epoch.

    It trains on the process's device (:func:`autoprune.device.current_device`), each batch
    moved there, and leaves the model on the CPU. ``after_step`` runs after every optimiser
    step (fine-tuning uses it to keep pruned weights at zero). A non-finite or exploding loss
    raises :class:`DivergedError`; a Ctrl-C (:mod:`autoprune.stop`) stops at the end of a batch.
    ``teacher``: the network the model was compressed from, which ``config.distill`` learns from.
    """
    return fit_resumable(
        model,
        splits,
        config,
        seed=seed,
        callbacks=callbacks,
        after_step=after_step,
        progress=progress,
        desc=desc,
        teacher=teacher,
    )[0]


def fit_resumable(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    *,
    seed: int = 0,
    callbacks: Sequence[EpochCallback] = (),
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    resume: TrainState | None = None,
    until: int | None = None,
    new_schedule: bool = False,
    teacher: nn.Module | None = None,
) -> tuple[list[float], TrainState | None]:
    """:func:`fit`, stoppable and resumable at an epoch's end: runs the epochs after
    ``resume.epoch`` up to ``until`` (default: all of ``config.epochs``) and returns the
    validation history and the state to continue from. Stopped at epoch k and resumed, a run
    gives the same weights as one that never stopped (same seed, same device).

    ``new_schedule``: ``resume`` comes from another run (a capped search trial promoted to the
    full budget): its optimiser moments and random streams carry over, and ``config`` starts
    its own epochs and learning-rate schedule. Your own training loop (a task) is neither
    stopped nor resumed: its state is None."""
    teacher = teacher if config.distill > 0 else None  # labels only: no teacher to run
    if config.distill > 0 and teacher is None:
        raise ConfigError(
            f"{desc}: distill={config.distill} needs the network before compression to learn from"
        )
    if teacher is not None and splits.task is not None:
        raise ConfigError(
            "distill is for autoprune's own training loop; your task's finetune trains its own way"
        )
    device = current_device()
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    try:
        if splits.task is not None:
            history = _fit_task(
                model, splits, config, seed=seed, callbacks=callbacks, after_step=after_step, desc=desc
            )
            return history, None
        return _fit(
            model,
            splits,
            config,
            device,
            seed=seed,
            callbacks=callbacks,
            after_step=after_step,
            progress=progress,
            desc=desc,
            resume=resume,
            until=until,
            new_schedule=new_schedule,
            teacher=teacher,
        )
    finally:
        model.to("cpu")
        if teacher is not None:
            teacher.to("cpu")


def _fit_task(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    *,
    seed: int,
    callbacks: Sequence[EpochCallback],
    after_step: Callable[[], None] | None,
    desc: str,
) -> list[float]:
    """Your own training loop (``splits.task``) for the budget of ``config``: pruned weights are
    put back to zero after each of its optimiser's steps (a global ``torch.optim`` hook while it
    runs), and what it reports per epoch goes to the callbacks (Optuna's pruner), as ours does."""
    history: list[float] = []
    ours: list[BaseException] = []  # a callback's exception passes through the task's loop as is

    def report(epoch: int, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise DivergedError(f"{desc} diverged at epoch {epoch} (the task reported {value})")
        history.append(value)
        try:
            for callback in callbacks:
                callback(epoch, value)
        except BaseException as e:
            ours.append(e)
            raise
        if stop_requested():  # Ctrl-C: the end of an epoch is a safe point
            ours.append(KeyboardInterrupt())
            raise ours[-1]

    hook = None
    if after_step is not None:
        hook = register_optimizer_step_post_hook(lambda *args: after_step())
    budget = FinetuneBudget(config.epochs, config.max_batches, config.lr, config.batch_size, seed)
    try:
        model.train()
        splits.task.finetune(model, budget, report)
    except (DivergedError, KeyboardInterrupt):
        raise
    except Exception as e:
        if ours and e is ours[-1]:
            raise
        raise TaskError(f"{desc}: the task's finetune raised {type(e).__name__}: {e}") from None
    finally:
        if hook is not None:
            hook.remove()
        model.eval()
    return history


def _fit(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    device: torch.device,
    *,
    seed: int,
    callbacks: Sequence[EpochCallback],
    after_step: Callable[[], None] | None,
    progress: bool,
    desc: str,
    resume: TrainState | None = None,
    until: int | None = None,
    new_schedule: bool = False,
    teacher: nn.Module | None = None,
) -> tuple[list[float], TrainState]:
    train = splits.train
    batches = math.ceil(len(train) / config.batch_size)
    if config.max_batches is not None:
        batches = min(batches, config.max_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * batches))
    generator = torch.Generator().manual_seed(seed)
    augment = torch.Generator().manual_seed(seed + 1)  # its own draws: the order is the same with or without
    loss_fn = nn.CrossEntropyLoss()
    dtype = AMP[config.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    first_loss: float | None = None
    history: list[float] = []
    start, steps = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)  # its moments, and its learning rate where it stopped
        generator.set_state(resume.order)
        augment.set_state(resume.augment)
        first_loss = resume.first_loss if math.isfinite(resume.first_loss) else None
        # this run's own schedule, from its own learning rate: a warm restart. Continuing one
        # cosine over both runs instead (from the rate it has after the first run's batches) left
        # 20 of 28 finals of a 30-trial small_resnet study worse (mean drop 29.5 against 27.1)
        if new_schedule:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = config.lr
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * batches))
        else:
            scheduler.load_state_dict(resume.scheduler)
            start, steps = resume.epoch, resume.steps
    last = config.epochs if until is None else min(until, config.epochs)

    bar = tqdm(total=(last - start) * batches, desc=desc, unit="batch", disable=not progress, leave=False)
    for epoch in range(start + 1, last + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)[: batches * config.batch_size]
        for b, (xb, yb) in enumerate(train.batches(config.batch_size, order)):
            xb = augment_batch(xb, splits.augment, augment)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)  # (B, C, H, W), (B,)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(xb)  # (B, classes)
                loss = loss_fn(logits, yb)
                if teacher is not None:
                    with torch.no_grad():
                        targets = teacher(xb)
                    loss = distilled(loss, logits, targets, config.distill, config.temperature)
            value = loss.detach().float().item()
            if first_loss is None:
                first_loss = value
            if not math.isfinite(value) or value > max(100.0, 50.0 * first_loss):
                bar.close()
                raise DivergedError(
                    f"{desc} diverged at epoch {epoch}, batch {b + 1} (loss {value:.3g}); "
                    f"lower the learning rate (lr={config.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            if after_step is not None:
                after_step()
            bar.update()
            if stop_requested():  # Ctrl-C: the end of a batch is a safe point
                bar.close()
                raise KeyboardInterrupt
            bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
        val = accuracy(model, splits.val)
        history.append(val)
        bar.set_postfix(epoch=epoch, val_acc=f"{val:.2f}")
        for callback in callbacks:
            callback(epoch, val)
    bar.close()
    model.eval()
    state = TrainState(
        last,
        steps,
        optimizer.state_dict(),
        scheduler.state_dict(),
        generator.get_state(),
        augment.get_state(),
        first_loss if first_loss is not None else math.nan,
    )
    return history, state


def distilled(
    label_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """The labels' loss mixed with distillation (Hinton et al. 2015): the KL divergence of the
    student's softened outputs from the teacher's, times T^2 so its gradients keep their scale."""
    t = temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(logits.float() / t, dim=1),
        nn.functional.log_softmax(targets.float() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - weight) * label_loss + weight * t * t * soft


# ---- base models, trained at most once per (model, data, settings) -------------------------


def cache_dir() -> Path:
    """Where base models are cached: ``base/`` in the cache (:mod:`autoprune.cache`), created
    and checked when first used."""
    return cache_folder("base")


@dataclass(frozen=True)
class BaseModel:
    model: nn.Module
    spec: ModelSpec
    path: Path  # the cached state_dict
    cached: bool  # True when it was loaded rather than trained now
    val_history: tuple[float, ...]


def base_key(
    spec: ModelSpec,
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    checkpoint: Path | None,
    seed: int = 0,
) -> str:
    """The cache key: what the freshly built ``model`` is (:func:`model_fingerprint`), the
    data's content, the settings and the start point."""
    record = {
        "version": CACHE_VERSION,
        "torch": torch.__version__,
        "spec": spec.to_dict(),
        "model": model_fingerprint(spec.name, model),
        "data": splits.fingerprint,
        "train": {**_base_settings(config), "seed": seed},
        "checkpoint": _file_hash(checkpoint) if checkpoint else None,
    }
    return hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=12).hexdigest()


def _base_settings(config: TrainConfig) -> dict[str, Any]:
    """What of ``config`` a base's training depends on: the fine-tuning-only settings are left
    out (a base is never distilled: there is no network before it), so caches made before
    they existed still match."""
    return {k: v for k, v in config.to_dict().items() if k not in ("distill", "temperature")}


def train_base(
    spec: ModelSpec,
    splits: DataSplits,
    config: TrainConfig,
    *,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    use_cache: bool = True,
    cached_only: bool = False,
    progress: bool = True,
) -> BaseModel:
    """Build ``spec``, optionally start from ``checkpoint``, train it, and cache the result;
    ``cached_only``: never train (an error when it is not cached)."""
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    torch.manual_seed(seed)  # the same seed gives the same initial weights
    model = create_model(spec)
    key = base_key(spec, model, splits, config, checkpoint, seed)
    path = cache_dir() / f"{spec.name.replace('/', '_').replace(':', '_')[-40:]}-{key}.pt"
    meta_path = path.with_suffix(".json")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if use_cache and (cached := _load_cached(model, path, meta_path)) is not None:
        log.info("loaded cached base model %s", path)
        return BaseModel(model, spec, path, True, cached)
    if cached_only:
        raise ConfigError(
            f"the base model of {spec.name!r} is not in this machine's cache, and autoprune does not "
            "train a stored study's base with the study's own settings: run its search or "
            "`autoprune train` with those settings yourself first"
        )

    history = fit(model, splits, config, seed=seed, progress=progress, desc=f"train {spec.name}")
    buffer = io.BytesIO()
    torch.save(
        {k: v.cpu() for k, v in model.state_dict().items()}, buffer
    )  # a base from a GPU loads anywhere
    sha = write_atomic(path, buffer.getvalue())
    meta = {
        "spec": spec.to_dict(),
        "train": {**config.to_dict(), "seed": seed},
        "val_history": history,
        "sha": sha,
    }
    write_atomic(meta_path, json.dumps(meta).encode())
    return BaseModel(model, spec, path, False, tuple(history))


def _load_cached(model: nn.Module, path: Path, meta_path: Path) -> tuple[float, ...] | None:
    """The validation history of the cached base at ``path``, loaded into ``model``; None when
    it is not cached. A file that is not what was written there is one line naming it."""
    meta_bytes = read_bytes(meta_path)
    if meta_bytes is None:
        return None
    try:
        meta = json.loads(meta_bytes)
        history = tuple(float(v) for v in meta["val_history"])
    except (ValueError, TypeError, KeyError) as e:
        raise CacheError(
            f"the cache entry {meta_path} is unreadable ({e}): delete it and {path.name}"
        ) from None
    data = read_verified(path, meta.get("sha"))
    if data is None:
        return None
    try:
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any failure to load a cached file means: delete it
        raise CacheError(f"the cache entry {path} cannot be loaded ({type(e).__name__}): delete it") from None
    model.eval()
    return history


def _file_hash(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def measured_base(base: BaseModel, splits: DataSplits, **settings: Any) -> tuple[Metrics, bool]:
    """The base model's measurement (:func:`measure_model` with ``settings``), kept beside the
    cached base: a base from the cache is measured once per setting (threads, latency batch)
    and this torch; returns it and whether it came from the cache. A base that is not in the
    cache (a checkpoint used as is) is measured every time."""
    threads = settings.get("threads") or torch.get_num_threads()
    key = json.dumps(
        {**settings, "threads": threads, "torch": torch.__version__}, sort_keys=True, default=str
    )
    path = base.path.with_suffix(".metrics.json")
    in_cache = cache_dir() in base.path.parents
    stored: dict[str, Any] = {}
    if in_cache and (data := read_bytes(path)) is not None:
        try:
            stored = json.loads(data)
            metrics = Metrics.from_stored(stored.get(key))
            if metrics is not None:
                return metrics, True
        except (AttributeError, ValueError):
            pass
        stored = stored if isinstance(stored, dict) else {}
    metrics = measure_model(base.model, splits, **settings)
    if in_cache:
        write_atomic(path, json.dumps({**stored, key: metrics.to_dict()}).encode())
    return metrics, False
