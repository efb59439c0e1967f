"""Retrain pruned descendant blocks on the teacher's intermediate features (LegoDNN, MobiCom'21).

Each student ``students[(i, name)]`` is trained in place to reproduce teacher block ``i``: its input is the teacher's
activation in front of block ``i``, its target the teacher block's output, its loss the MSE. The teacher chain runs
once per batch and its captured activations feed every variant of every block. When all the features of the
training inputs fit in :attr:`RetrainSettings.feature_cache_bytes` they are computed in a single teacher pass and
reused by every epoch; otherwise they are recomputed batch by batch.

A seeded ``val_fraction`` of the inputs is held out; each student keeps its best state on it (the untrained state
counts, so retraining never makes a student worse there), stops early after ``patience`` epochs without improvement
and ends in eval mode with its best state restored. The teacher is never modified.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from legocompile._log import logger
from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode
from legocompile.outputs import as_outputs
from legocompile.variants.checkpoint import load_checkpoint, save_checkpoint
from legocompile.progress import Progress, SilentProgress

StudentKey = tuple[int, str]


@dataclass(frozen=True, kw_only=True)
class RetrainSettings:
    """How descendants are retrained.

    Attributes:
        epochs: Most passes over the training split.
        lr: Adam learning rate.
        batch_size: Samples per step (and per teacher forward).
        val_fraction: Held-out share of the inputs, in (0, 1), used for best-state selection and early stopping.
        patience: A student stops after this many epochs without a lower validation MSE.
        seed: Seeds the validation split and the per-epoch shuffles.
        feature_cache_bytes: Cache the teacher's features when they fit in this many bytes (0: never cache).
    """

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    val_fraction: float = 0.1
    patience: int = 4
    seed: int = 0
    feature_cache_bytes: int = 2 * 2**30

    def __post_init__(self) -> None:
        minimum = {"epochs": 1, "batch_size": 1, "patience": 1, "seed": 0, "feature_cache_bytes": 0}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in minimum:
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum[f.name]:
                    raise LegoCompileError(
                        f"retrain setting {f.name} must be an integer >= {minimum[f.name]}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise LegoCompileError(f"retrain setting {f.name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise LegoCompileError(f"retrain setting lr must be > 0, got {self.lr!r} (e.g. 1e-3)")
        if not 0.0 < self.val_fraction < 1.0:
            raise LegoCompileError(f"retrain setting val_fraction must be in (0, 1), got {self.val_fraction!r}")


@dataclass(frozen=True)
class RetrainResult:
    """One student's retraining.

    Attributes:
        best_val_mse: Validation MSE of the restored (best) state.
        initial_val_mse: Validation MSE before retraining.
        epochs_run: Epochs the student trained before it stopped (<= ``epochs``).
        best_epoch: Epoch of the restored state (0: the untrained state was never beaten).
        seconds: The student's own training and validation time (the shared teacher passes are not included).
    """

    best_val_mse: float
    initial_val_mse: float
    epochs_run: int
    best_epoch: int
    seconds: float


def validation_split(n_samples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded (train indices, validation indices) split used by :func:`retrain_variants`, both ascending."""
    if n_samples < 2:
        raise LegoCompileError(f"retraining needs at least 2 input samples (train + validation), got {n_samples}")
    n_val = min(n_samples - 1, max(1, round(n_samples * val_fraction)))
    order = np.random.default_rng(seed).permutation(n_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def retrain_variants(
    teacher_blocks: Sequence[nn.Module],
    students: dict[StudentKey, nn.Module],
    train_inputs: np.ndarray,
    settings: RetrainSettings,
    *,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> dict[StudentKey, RetrainResult]:
    """Train every student in place to reproduce its teacher block's output from the teacher's input to it.

    Args:
        teacher_blocks: The teacher chain (block ``i + 1`` consumes block ``i``'s output); left unchanged.
        students: ``(block index, variant name) -> module`` with the teacher block's boundary shapes.
        train_inputs: Inputs of block 0, ``(N, ...)``; a seeded ``settings.val_fraction`` is held out.
        settings: Epochs, learning rate, batch size, early stopping, feature cache budget.
        progress: A :class:`legocompile.progress.Progress`; one stage ``"retrain"`` advanced per epoch.
        checkpoint: A path stem: after every epoch the whole state is saved there, and a run finding a matching
            checkpoint resumes after its epoch (see :mod:`legocompile.variants.checkpoint`).

    Returns:
        One :class:`RetrainResult` per student key. The students end in eval mode with their best state.

    Raises:
        LegoCompileError: On bad settings, inputs or keys, a student that shares parameters with the teacher, or
            a student whose output shape differs from its teacher block's.
    """
    if not isinstance(settings, RetrainSettings):
        raise LegoCompileError(f"settings must be a RetrainSettings, got {type(settings).__name__}")
    teacher = list(teacher_blocks)
    _check_students(teacher, students)
    x_all = _as_tensor(train_inputs)
    progress = SilentProgress() if progress is None else progress
    if not students:
        return {}
    train_idx, val_idx = validation_split(len(x_all), settings.val_fraction, settings.seed)
    rng = np.random.default_rng([settings.seed, 1])
    states = {key: _Student(key, module, settings.lr) for key, module in students.items()}
    with eval_mode(*teacher), _restoring(states.values()):
        features = _Features(teacher, {i for i, _ in students}, x_all, settings, val_idx)
        done = load_checkpoint(checkpoint, states.values(), rng) if checkpoint is not None else 0
        if not done:
            _evaluate(states.values(), features, val_idx, settings.batch_size, epoch=0)
        with progress.stage("retrain", settings.epochs) as advance:
            advance(done)
            for epoch in range(done + 1, settings.epochs + 1):
                active = [s for s in states.values() if not s.stopped]
                if not active:
                    advance(settings.epochs - epoch + 1)
                    break
                perm = rng.permutation(train_idx)
                for start in range(0, len(perm), settings.batch_size):
                    acts = features.get(perm[start : start + settings.batch_size])
                    for s in active:
                        s.step(acts)
                _evaluate(active, features, val_idx, settings.batch_size, epoch=epoch)
                for s in active:
                    s.epochs_run = epoch
                    s.update_best(epoch, settings.patience)
                    logger.debug("  %s: val MSE %.4g (best %.4g at epoch %d)", s.key, s.last_mse, s.best_mse,
                                 s.best_epoch)
                logger.info(
                    "retrain epoch %d/%d: %d of %d students active, mean val MSE %.4g, %d stopped",
                    epoch, settings.epochs, len(active), len(states),
                    float(np.mean([s.last_mse for s in active])), sum(s.stopped for s in active),
                )
                if checkpoint is not None:
                    save_checkpoint(checkpoint, epoch, states.values(), rng)
                advance()
    logger.info("retrained %d students; teacher ran on %d samples", len(states), features.teacher_samples)
    return {key: s.result() for key, s in states.items()}


# --- students ------------------------------------------------------------------------------------------------------


class _Student:
    def __init__(self, key: StudentKey, module: nn.Module, lr: float) -> None:
        self.key, self.module, self.block = key, module, key[0]
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=lr) if params else None
        self.device = next((t.device for t in [*module.parameters(), *module.buffers()]), torch.device("cpu"))
        self.stopped = self.optimizer is None
        self.initial_mse = self.best_mse = self.last_mse = math.inf
        self.best_state = copy.deepcopy(module.state_dict())
        self.best_epoch = self.epochs_run = self.stale_epochs = 0
        self.seconds = 0.0

    def step(self, acts: dict[int, torch.Tensor]) -> None:
        started = time.perf_counter()
        self.module.train()
        outs, targets = self._forward(acts)
        # Several outputs (a model's last block returning a tuple): each output's MSE counts equally.
        loss = sum(nn.functional.mse_loss(o, t) for o, t in zip(outs, targets)) / len(outs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seconds += time.perf_counter() - started

    def squared_error(self, acts: dict[int, tuple[torch.Tensor, ...]]) -> list[tuple[float, int]]:
        """Per output: (sum of squared errors, element count) on this batch."""
        started = time.perf_counter()
        self.module.eval()
        errors = []
        with torch.no_grad():
            outs, targets = self._forward(acts)
            for o, t in zip(outs, targets):
                diff = o.double() - t.double()
                errors.append((float((diff * diff).sum()), diff.numel()))
        self.seconds += time.perf_counter() - started
        return errors

    def _forward(self, acts: dict[int, tuple[torch.Tensor, ...]]) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """(outputs, targets), one entry per block output; the input is cloned, as an in-place first op must not
        alter the shared features."""
        x = acts[self.block][0].to(self.device).clone()
        try:
            out = self.module(x)
        except Exception as e:  # noqa: BLE001 - any failure on the teacher's features is the same user error
            raise LegoCompileError(
                f"variant {self.key[1]!r} of block {self.block} fails on the teacher's input of shape "
                f"{tuple(x.shape)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        targets = tuple(t.to(self.device) for t in acts[self.block + 1])
        outs = as_outputs(out)
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in outs]
        if shapes != [tuple(t.shape) for t in targets]:
            want = [tuple(t.shape) for t in targets]
            raise LegoCompileError(
                f"variant {self.key[1]!r} of block {self.block} outputs {shapes[0] if len(shapes) == 1 else shapes} "
                f"but the teacher block outputs {want[0] if len(want) == 1 else want}"
            )
        return outs, targets

    def update_best(self, epoch: int, patience: int) -> None:
        if self.last_mse < self.best_mse:
            self.best_mse, self.best_epoch, self.stale_epochs = self.last_mse, epoch, 0
            self.best_state = copy.deepcopy(self.module.state_dict())
        else:
            self.stale_epochs += 1
            self.stopped = self.stale_epochs >= patience

    def restore(self) -> None:
        self.module.load_state_dict(self.best_state)
        self.module.eval()
        self.optimizer = None  # frees Adam's moments

    def result(self) -> RetrainResult:
        return RetrainResult(self.best_mse, self.initial_mse, self.epochs_run, self.best_epoch, self.seconds)


def _evaluate(students, features: _Features, val_idx: np.ndarray, batch_size: int, *, epoch: int) -> None:
    """Set each student's ``last_mse`` (and at epoch 0 its initial and best MSE) over the validation split."""
    students = list(students)
    sums: dict = {s.key: None for s in students}  # per student: [sse, count] per output
    for start in range(0, len(val_idx), batch_size):
        acts = features.get(val_idx[start : start + batch_size])
        for s in students:
            errors = s.squared_error(acts)
            totals = sums[s.key] = sums[s.key] or [[0.0, 0] for _ in errors]
            for t, (sse, n) in zip(totals, errors):
                t[0] += sse
                t[1] += n
    for s in students:
        s.last_mse = sum(sse / n for sse, n in sums[s.key]) / len(sums[s.key])  # the training loss's weighting
        if epoch == 0:
            s.initial_mse = s.best_mse = s.last_mse


# --- teacher features ----------------------------------------------------------------------------------------------


class _Features:
    """The teacher's activations ``k -> ((B, ...),)`` in front of block ``k``, for the needed ``k``, per index batch:
    a tuple per ``k``, of one tensor, except after the last block of a model that returns several.

    The first batch (the head of the validation split, which the initial evaluation asks for first) fixes the
    per-sample feature size; if all ``N`` samples fit the budget the rest are computed in one pass and cached.
    """

    def __init__(
        self, teacher: list[nn.Module], blocks: set[int], x_all: torch.Tensor, settings: RetrainSettings,
        val_idx: np.ndarray,
    ) -> None:
        self.teacher, self.x_all = teacher, x_all
        self.needed = sorted(blocks | {i + 1 for i in blocks})
        self.device = next((t.device for m in teacher for t in [*m.parameters(), *m.buffers()]), torch.device("cpu"))
        self.teacher_samples = 0
        self.cache: dict[int, torch.Tensor] | None = None
        self._pending: tuple[np.ndarray, dict[int, torch.Tensor]] | None = None
        head = val_idx[: settings.batch_size]
        first = self._run(head)
        per_sample = sum(t[0].numel() * t.element_size() for k, ts in first.items() if k > 0 for t in ts)
        total_bytes = per_sample * len(x_all)
        if total_bytes <= settings.feature_cache_bytes:
            self.cache = {k: tuple(torch.empty((len(x_all), *t.shape[1:]), dtype=t.dtype, device=t.device) for t in ts)
                          for k, ts in first.items() if k > 0}
            self._store(head, first)
            rest = np.setdiff1d(np.arange(len(x_all)), head)
            for start in range(0, len(rest), settings.batch_size):
                idx = rest[start : start + settings.batch_size]
                self._store(idx, self._run(idx))
            logger.info("cached teacher features: %.1f MiB for %d samples", total_bytes / 2**20, len(x_all))
        else:
            self._pending = (head, first)
            logger.info("teacher features (%.1f MiB) exceed the cache budget; recomputing per batch",
                        total_bytes / 2**20)

    def get(self, idx: np.ndarray) -> dict[int, tuple[torch.Tensor, ...]]:
        if self.cache is not None:
            rows = torch.from_numpy(idx).to(self.device)
            acts = {k: tuple(v.index_select(0, rows) for v in vs) for k, vs in self.cache.items()}
            if 0 in self.needed:
                acts[0] = (self.x_all[torch.from_numpy(idx)].to(self.device),)
            return acts
        if self._pending is not None and np.array_equal(self._pending[0], idx):
            acts, self._pending = self._pending[1], None
            return acts
        return self._run(idx)

    def _store(self, idx: np.ndarray, acts: dict[int, tuple[torch.Tensor, ...]]) -> None:
        rows = torch.from_numpy(idx).to(self.device)
        for k, stores in self.cache.items():
            for store, t in zip(stores, acts[k]):
                store.index_copy_(0, rows, t)

    def _run(self, idx: np.ndarray) -> dict[int, tuple[torch.Tensor, ...]]:
        """One teacher forward over the chain prefix that the students need, capturing the needed activations."""
        self.teacher_samples += len(idx)
        cur = self.x_all[torch.from_numpy(idx)].to(self.device)
        acts: dict[int, tuple[torch.Tensor, ...]] = {}
        with torch.no_grad():
            for k in range(self.needed[-1]):
                if not isinstance(cur, torch.Tensor):
                    raise LegoCompileError(f"teacher block {k - 1} returned {type(cur).__name__}, but block {k} "
                                           "needs one tensor (only the last block may return several)")
                if k in self.needed:
                    acts[k] = (cur,)
                    cur = cur.clone()  # the block may work in place on its input
                cur = self.teacher[k](cur)
        acts[self.needed[-1]] = as_outputs(cur)
        return acts


# --- checks ----------------------------------------------------------------------------------------------------------


def _as_tensor(train_inputs: np.ndarray) -> torch.Tensor:
    if not isinstance(train_inputs, np.ndarray) or train_inputs.ndim < 1:
        raise LegoCompileError(f"train_inputs must be a numpy array of shape (N, ...), got {type(train_inputs)}")
    return torch.from_numpy(np.require(train_inputs, np.float32, ["C", "W"]))  # copies read-only arrays


def _check_students(teacher: list[nn.Module], students: dict[StudentKey, nn.Module]) -> None:
    if not teacher:
        raise LegoCompileError("cannot retrain variants: the teacher chain is empty")
    if not isinstance(students, dict):
        raise LegoCompileError(f"students must be a dict (block index, variant name) -> module, got {students!r}")
    teacher_tensors = {t.data_ptr() for m in teacher for t in [*m.parameters(), *m.buffers()] if t.numel()}
    for key, module in students.items():
        if (not isinstance(key, tuple) or len(key) != 2 or isinstance(key[0], bool)
                or not isinstance(key[0], int) or not 0 <= key[0] < len(teacher)):
            raise LegoCompileError(
                f"student key {key!r} must be (block index in 0..{len(teacher) - 1}, variant name)"
            )
        if not isinstance(module, nn.Module):
            raise LegoCompileError(f"student {key!r} is a {type(module).__name__}, not a torch.nn.Module")
        if any(t.numel() and t.data_ptr() in teacher_tensors for t in [*module.parameters(), *module.buffers()]):
            raise LegoCompileError(
                f"student {key!r} shares weights with the teacher; retraining it would change the teacher — "
                "pass a copy (prune_block returns one)"
            )


@contextmanager
def _restoring(students) -> Iterator[None]:
    """On the way out (errors included): every student back to its best state, in eval mode."""
    try:
        yield
    finally:
        for s in students:
            s.restore()
