"""The second built-in example: semantic segmentation of scikit-learn's handwritten digits.

Data. ``sklearn.datasets.load_digits`` (offline, 1,797 8x8 images, values 0..16). Each image is scaled to [0, 1] and
upsampled to 16x16 (bilinear, ``align_corners=False``). Its per-pixel label is the digit's class plus one (1..10) on
the *stroke* pixels, those whose upsampled intensity exceeds ``STROKE_THRESHOLD`` = 0.5 (half the full ink value 16),
and background (0) elsewhere: 11 classes, about 31% stroke pixels. So a pixel's label needs the whole digit's shape,
not just its own intensity. The split is the classification example's (``train_test_split(test_size=0.2,
random_state=0, stratify=digit)``: 1,437 training and 360 evaluation images); inputs are normalized with the mean and
standard deviation of the training split's upsampled pixels only.

Model. ``segnet_digits``: a small encoder-decoder CNN built from hourglass blocks (down-sample by a strided conv,
process, up-sample by nearest x2 and a conv, add the block's input back). Every skip connection stays inside its
block, so the tensors between ``stem | hg1 | hg2 | hg3 | head`` are single-tensor cut points for the partitioner
(``hg2`` nests a second hourglass down to 4x4, so its receptive field covers the image). Only convs, BatchNorm, ReLU,
nearest up-sampling and residual adds: traceable, and its inner channels are prunable.

Training. ``python -m legocompile.examples.segmentation --train`` trains it deterministically on CPU (one thread)
and writes ``weights/segnet_digits.safetensors`` (the full ``state_dict``) and ``weights/segnet_digits.json`` (mIoU
on the evaluation split, epochs, seed, torch version). ``legocompile build --example segmentation`` builds it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legocompile.errors import LegoCompileError
from legocompile.examples import WEIGHTS_DIR

logger = logging.getLogger("legocompile")

MODEL_NAME = "segnet_digits"
#: Side length of the model's input images and label masks.
IMAGE_SIZE = 16
#: A pixel is stroke when its upsampled intensity in [0, 1] is above this (the raw value 8 of 0..16).
STROKE_THRESHOLD = 0.5
#: Background plus one class per digit.
NUM_CLASSES = 11
#: Channels of the full-resolution trunk (the hourglasses go to 2x and 4x this).
WIDTH = 16
INPUT_SHAPE = (1, 1, IMAGE_SIZE, IMAGE_SIZE)
WEIGHTS_PATH = WEIGHTS_DIR / f"{MODEL_NAME}.safetensors"
METADATA_PATH = WEIGHTS_DIR / f"{MODEL_NAME}.json"

DEFAULT_EPOCHS = 40
DEFAULT_SEED = 0
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2

_RETRAIN_HINT = "regenerate it with `python -m legocompile.examples.segmentation --train`"


# ------------------------------------------------------------------------------------------------------ data
def upsample(images: np.ndarray) -> np.ndarray:
    """Raw digit images ``(N, 8, 8)`` with values 0..16 -> float32 ``(N, 16, 16)`` in [0, 1] (bilinear)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(x[:, 0].numpy(), dtype=np.float32)


def stroke_masks(pixels: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """Per-pixel labels: ``digit + 1`` where ``pixels > STROKE_THRESHOLD``, else 0 (int64, same shape as ``pixels``).

    Args:
        pixels: Upsampled images ``(N, H, W)`` in [0, 1].
        digits: The digit (0..9) of each image ``(N,)``.
    """
    digits = np.asarray(digits, dtype=np.int64).reshape(-1, 1, 1)
    return np.where(np.asarray(pixels) > STROKE_THRESHOLD, digits + 1, 0).astype(np.int64)


@dataclass(frozen=True)
class SegSplits:
    """Preprocessed splits: normalized inputs ``(N, 1, 16, 16)`` float32, masks ``(N, 16, 16)`` int64, digits
    ``(N,)`` int64, each image's index in ``load_digits()`` and the normalization constants (from the training
    split)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digits_train: np.ndarray
    digits_test: np.ndarray
    index_train: np.ndarray
    index_test: np.ndarray
    mean: float
    std: float


@functools.lru_cache(maxsize=1)
def load_splits() -> SegSplits:
    """Loads the digits with their masks, the classification example's split, normalized from the training split.

    The arrays are cached, shared and read-only.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    digits = raw.target.astype(np.int64)
    pixels = upsample(raw.images)
    masks = stroke_masks(pixels, digits)
    # the same parameters as legocompile.examples.digits.load_splits: the same images are held out in both examples
    train_idx, test_idx = train_test_split(np.arange(len(digits)), test_size=0.2, random_state=0, stratify=digits)
    mean = float(pixels[train_idx].mean(dtype=np.float64))
    std = float(pixels[train_idx].std(dtype=np.float64))
    x = ((pixels - mean) / std).astype(np.float32)[:, None]

    def frozen(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        a.setflags(write=False)
        return a

    tr, te = train_idx, test_idx
    return SegSplits(x_train=frozen(x[tr]), y_train=frozen(masks[tr]), x_test=frozen(x[te]), y_test=frozen(masks[te]),
                     digits_train=frozen(digits[tr]), digits_test=frozen(digits[te]), index_train=frozen(tr),
                     index_test=frozen(te), mean=mean, std=std)


def dataset(num_calibration: int = 256) -> dict:
    """Dataset provider: calibration = the first ``num_calibration`` training images, eval = the whole evaluation
    split with its masks, train (descendants' retraining inputs) = the whole training split."""
    s = load_splits()
    if not 1 <= num_calibration <= len(s.x_train):
        raise LegoCompileError(f"num_calibration must be in 1..{len(s.x_train)} for the segmentation example, "
                               f"got {num_calibration}")
    return {"calibration": s.x_train[:num_calibration].copy(), "eval": (s.x_test.copy(), s.y_test.copy()),
            "train": s.x_train.copy()}


# ------------------------------------------------------------------------------------------------------ model
def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Hourglass(nn.Module):
    """``relu(x + up(inner(down(x))))``: down-sample x2 (strided conv), ``inner`` at half resolution, up-sample x2
    (nearest, then a conv back to ``channels``). The skip stays inside the block."""

    def __init__(self, channels: int, mid: int, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.down = conv_bn_relu(channels, mid, stride=2)
        self.inner = inner if inner is not None else conv_bn_relu(mid, mid)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                nn.Conv2d(mid, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.up(self.inner(self.down(x))))


class SegNetDigits(nn.Module):
    """``stem | hg1 | hg2 | hg3 | head``: per-pixel class scores ``(N, num_classes, H, W)`` at the input's size."""

    def __init__(self, width: int = WIDTH, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn_relu(1, w), conv_bn_relu(w, w))
        self.hg1 = Hourglass(w, 2 * w)
        self.hg2 = Hourglass(w, 2 * w, inner=Hourglass(2 * w, 4 * w))
        self.hg3 = Hourglass(w, 2 * w)
        self.head = nn.Sequential(conv_bn_relu(w, w), nn.Conv2d(w, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hg3(self.hg2(self.hg1(self.stem(x)))))


def segnet_digits(width: int = WIDTH) -> SegNetDigits:
    return SegNetDigits(width)


def load_model() -> nn.Module:
    """The model with the shipped weights, in eval mode (the example's ``[model].factory``)."""
    from safetensors.torch import load_file

    if not WEIGHTS_PATH.is_file():
        raise LegoCompileError(f"segmentation example weights not found at {WEIGHTS_PATH}; {_RETRAIN_HINT}")
    model = segnet_digits(metadata()["width"])
    model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()


def metadata() -> dict[str, Any]:
    """The training record shipped with the weights (``segnet_digits.json``)."""
    if not METADATA_PATH.is_file():
        raise LegoCompileError(f"segmentation example metadata not found at {METADATA_PATH}; {_RETRAIN_HINT}")
    return json.loads(METADATA_PATH.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------------ training
@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """mIoU (``legocompile.profile.accuracy.miou``) of ``model`` in eval mode on ``x`` in one batch."""
    from legocompile.profile.accuracy import miou

    model.eval()
    return miou(model(torch.from_numpy(np.array(x))).numpy(), y)


def _shift(x: torch.Tensor, y: torch.Tensor, background: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Shifts each image and its mask by the same random offset of up to ``MAX_SHIFT`` px, padding background."""
    n, _, h, w = x.shape
    px = F.pad(x, [MAX_SHIFT] * 4, value=background)
    py = F.pad(y, [MAX_SHIFT] * 4, value=0)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen).tolist()
    xs = torch.stack([px[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    ys = torch.stack([py[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    return xs, ys


def train(epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED, width: int = WIDTH,
          progress: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Trains ``segnet_digits(width)`` on the training split (per-pixel cross-entropy, Adam with a one-cycle schedule,
    random shifts of image and mask), then measures mIoU once on the evaluation split (no model selection on it).

    Returns:
        The trained model (eval mode) and its training record.
    """
    report = progress or logger.info
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    s = load_splits()
    x_train, y_train = torch.from_numpy(np.array(s.x_train)), torch.from_numpy(np.array(s.y_train))
    background = (0.0 - s.mean) / s.std
    model = segnet_digits(width)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (len(x_train) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=epochs, steps_per_epoch=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(x_train), BATCH_SIZE):
            idx = perm[i:i + BATCH_SIZE]
            xb, yb = _shift(x_train[idx], y_train[idx], background, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        report(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  "
               f"elapsed {time.perf_counter() - start:.0f}s")
    score = evaluate(model, s.x_test, s.y_test)
    report(f"eval mIoU {score:.4f} on {len(s.y_test)} images ({time.perf_counter() - start:.0f}s)")
    meta = {
        "model": MODEL_NAME, "width": width, "image_size": IMAGE_SIZE, "stroke_threshold": STROKE_THRESHOLD,
        "num_classes": NUM_CLASSES, "metric": "miou", "eval_miou": score, "num_eval": int(len(s.y_test)),
        "num_train": int(len(s.y_train)), "mean": s.mean, "std": s.std, "epochs": epochs, "seed": seed,
        "batch_size": BATCH_SIZE, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
    }
    return model.eval(), meta


def save(model: nn.Module, meta: dict[str, Any], out_dir: Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """Writes ``segnet_digits.safetensors`` and ``segnet_digits.json`` atomically into ``out_dir``."""
    from safetensors.torch import save_file

    from legocompile.examples.train import _atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights, meta_path = out_dir / WEIGHTS_PATH.name, out_dir / METADATA_PATH.name
    _atomic_write(weights, lambda p: save_file(state, p, metadata={"model": MODEL_NAME}))
    text = json.dumps(meta, indent=2) + "\n"

    def write_meta(p: str) -> None:
        Path(p).write_text(text, encoding="utf-8")

    _atomic_write(meta_path, write_meta)
    return weights, meta_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the segmentation example and write its shipped weights.")
    parser.add_argument("--train", action="store_true", help="train and write the weights and training record")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    if not args.train:
        parser.error("nothing to do: pass --train")
    torch.set_num_threads(1)  # deterministic, and what the recorded run used
    model, meta = train(args.epochs, args.seed, progress=lambda msg: print(msg, flush=True))
    weights, meta_path = save(model, meta, args.out_dir)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta_path}")


if __name__ == "__main__":
    main()
