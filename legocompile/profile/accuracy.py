"""Task metrics: how good a model's outputs are against the labels, "higher is better", in [0, 1].

A metric is a function ``fn(outputs, labels) -> float``: ``outputs`` is the model's output array for the whole
evaluation split (a tuple of arrays when the model returns several), ``labels`` the evaluation labels exactly as the
user gave them (class ids, per-pixel masks, boxes, ...). Built in:

* ``top1``: the fraction of samples whose arg-max class equals the label (classification).
* ``miou``: mean intersection-over-union of the arg-max class map against per-pixel class masks (segmentation).

A project may name its own metric as ``"package.module:function"``. That is the user's own code, imported at build
time only; a bundle records the metric's *name* (``teacher.metric`` in the manifest) and nothing that reads a
bundle (``legocompile run``, ``inspect``) imports it: a bundle is data.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.errors import LegoCompileError

DEFAULT_METRIC = "top1"


def top1(logits: Any, labels: Any) -> float:
    """Fraction of rows whose arg-max equals the label (labels: one class id per sample)."""
    logits = _single_output(logits, "top1")
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.size and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)  # class ids stored as floats
    if labels.size != len(logits) or len(logits) == 0 or labels.dtype.kind not in "iub":
        raise LegoCompileError(
            f"top1 needs one integer class id per sample: {len(logits)} outputs but labels of shape {labels.shape} "
            f"and dtype {labels.dtype} (use metric = \"miou\" or your own for other labels)"
        )
    return float(np.mean(np.argmax(logits.reshape(len(logits), -1), axis=1) == labels.reshape(-1)))


def miou(logits: Any, labels: Any) -> float:
    """Mean intersection-over-union over the classes present, from per-pixel class scores and class masks.

    Args:
        logits: ``(N, C, H, W)`` class scores; the predicted class of a pixel is the arg-max over ``C``.
        labels: ``(N, H, W)`` class ids. Pixels labelled outside ``[0, C)`` (e.g. an ignore value 255) are left out.

    Returns:
        The mean over every class ``c`` present in the labels or the predictions (of the evaluated pixels) of
        ``|pred == c and label == c| / |pred == c or label == c|``, counted over the whole split; 1.0 when no pixel
        is evaluated.
    """
    logits = _single_output(logits, "miou")
    labels = np.asarray(labels)
    if logits.ndim < 3 or labels.shape != logits.shape[:1] + logits.shape[2:] or labels.dtype.kind not in "iub":
        raise LegoCompileError(
            f"miou needs class scores (N, C, H, W) and integer masks (N, H, W); got outputs {logits.shape} and "
            f"labels {labels.shape} of dtype {labels.dtype}"
        )
    num_classes = logits.shape[1]
    pred = np.argmax(logits, axis=1).reshape(-1).astype(np.int64)
    truth = labels.reshape(-1).astype(np.int64)
    valid = (truth >= 0) & (truth < num_classes)
    confusion = np.bincount(truth[valid] * num_classes + pred[valid], minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present])) if present.any() else 1.0


BUILTIN_METRICS: dict[str, Callable[[Any, Any], float]] = {"top1": top1, "miou": miou}


@dataclass(frozen=True)
class Metric:
    """A resolved metric.

    Attributes:
        name: what the manifest records and reports print: ``top1``, ``miou`` or ``package.module:function``.
        fn: the function.
        identity: what the accuracy stages' cache keys see: the name, plus a digest of a custom metric's source code
            (editing the function re-profiles accuracy).
    """

    name: str
    fn: Callable[[Any, Any], float]
    identity: str

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_METRICS

    def __call__(self, outputs: Any, labels: Any) -> float:
        """Evaluate; a value that is not a number in [0, 1] is a one-line error naming the metric."""
        value = self.fn(outputs, labels)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise LegoCompileError(f"metric {self.name} returned {type(value).__name__}, not a number") from None
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise LegoCompileError(f"metric {self.name} returned {number!r}; a metric returns a value in [0, 1] "
                                   "(higher is better)")
        return number


def resolve_metric(metric: str | Callable | Metric | None, *, search_path: Path | None = None) -> Metric:
    """``"top1"``, ``"miou"``, ``"package.module:function"`` (imported: build time only) or a callable."""
    if isinstance(metric, Metric):
        return metric
    if metric is None:
        metric = DEFAULT_METRIC
    if isinstance(metric, str):
        if metric in BUILTIN_METRICS:
            return Metric(metric, BUILTIN_METRICS[metric], metric)
        if metric.count(":") != 1 or not all(metric.split(":")):
            raise LegoCompileError(f'metric must be one of {", ".join(BUILTIN_METRICS)} or "package.module:function", '
                                   f"got {metric!r}")
        from legocompile.model import import_object

        fn = import_object(metric, field="[task].metric", search_path=search_path)
        if not callable(fn):
            raise LegoCompileError(f"[task].metric {metric} is a {type(fn).__name__}, not a function")
        return Metric(metric, fn, _identity(metric, fn))
    if callable(metric):
        name = f"{getattr(metric, '__module__', '?')}:{getattr(metric, '__qualname__', type(metric).__name__)}"
        return Metric(name, metric, _identity(name, metric))
    raise LegoCompileError(f"metric must be a name or a function, got {type(metric).__name__}")


def bundle_metric(name: str) -> Metric:
    """The metric a bundle names, for evaluating it later (``legocompile run``): built-ins only.

    Raises:
        LegoCompileError: for a user's metric: a bundle is data, so nothing that reads one imports code it names.
    """
    if name in BUILTIN_METRICS:
        return Metric(name, BUILTIN_METRICS[name], name)
    raise LegoCompileError(
        f"cannot evaluate the bundle's metric {name!r}: it is the project's own code, and a bundle is data, so "
        "legocompile never imports what a manifest names (evaluate with that function from Python instead)"
    )


def metric_of(teacher: dict) -> str:
    """The metric a manifest's ``teacher`` entry names (bundles from before metrics existed measured top-1)."""
    return str(teacher.get("metric", DEFAULT_METRIC))


def metric_label(name: str) -> str:
    """How reports print a metric: ``top-1``, ``mIoU``, else its name."""
    return {"top1": "top-1", "miou": "mIoU"}.get(name, name)


def _identity(name: str, fn: Callable) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # no source (a builtin, a C extension): the name alone
        return name
    return f"{name}@{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def _single_output(outputs: Any, name: str) -> np.ndarray:
    if isinstance(outputs, (tuple, list)):
        raise LegoCompileError(f"{name} needs one output array but the model returns {len(outputs)}; "
                               'name your own metric ("package.module:function") for several outputs')
    return np.asarray(outputs)
