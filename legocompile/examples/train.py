"""Trains the built-in example model and writes its shipped weights.

Usage::

    python -m legocompile.examples.train [--epochs N] [--seed S] [--out-dir DIR]

Trains ``resnet18_digits(32)`` on the digits training split (random shifts of
up to 2 px as augmentation; SGD with momentum and a one-cycle schedule), then
evaluates the final model once on the held-out test split. No model selection
is done on the test split. Writes, atomically:

* ``resnet18_digits.safetensors``: the full ``state_dict`` (BN running stats
  included), loadable with ``strict=True``;
* ``resnet18_digits.json``: model, width, measured test accuracy, sizes,
  epochs, seed and torch version.

Runs on 2 CPU threads in about 3-4 minutes on an otherwise idle 2-core machine.
Training is deterministic: a re-run reproduces bit-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legocompile.examples import EXAMPLE_WIDTH, WEIGHTS_DIR
from legocompile.examples.digits import MEAN, STD, load_splits
from legocompile.examples.resnet import resnet18_digits

logger = logging.getLogger("legocompile")

MODEL_NAME = "resnet18_digits"
DEFAULT_EPOCHS = 20
DEFAULT_SEED = 0
BATCH_SIZE = 64
MAX_LR = 0.1
WEIGHT_DECAY = 5e-4
MAX_SHIFT = 2
#: Normalized value of a blank (zero) pixel, used to pad shifted images.
_BACKGROUND = (0.0 - MEAN) / STD


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shifts each image by a random integer offset (padding with background).

    Args:
        x: Images ``(N, C, H, W)``.
        max_shift: Maximum shift in pixels along each axis.
        generator: Random generator for the offsets.

    Returns:
        Shifted images, same shape as ``x``.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=_BACKGROUND)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Computes top-1 accuracy of ``model`` in eval mode.

    Args:
        model: Classifier.
        x: Inputs ``(N, 1, 32, 32)`` float32.
        y: Integer labels ``(N,)``.
        batch_size: Evaluation batch size.

    Returns:
        Accuracy in [0, 1].
    """
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(np.array(x[i : i + batch_size])))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    width: int = EXAMPLE_WIDTH,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Trains ``resnet18_digits(width)`` on the digits training split.

    Args:
        epochs: Number of passes over the training split.
        seed: Seed for weight init, shuffling and augmentation.
        width: Model width.
        progress: Called with a one-line message after each epoch; defaults
            to logging at INFO level.

    Returns:
        The trained model (eval mode) and its metadata dict.
    """
    report = progress or logger.info
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    splits = load_splits()
    x_train = torch.from_numpy(np.array(splits.x_train))
    y_train = torch.from_numpy(np.array(splits.y_train))

    model = resnet18_digits(width)
    opt = torch.optim.SGD(
        model.parameters(), lr=MAX_LR, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    steps_per_epoch = (len(x_train) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=MAX_LR, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total_loss = 0.0
        for i in range(0, len(x_train), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            xb = random_shift(x_train[idx], MAX_SHIFT, gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        report(
            f"epoch {epoch + 1}/{epochs}  loss {total_loss / len(x_train):.4f}  "
            f"elapsed {time.perf_counter() - start:.0f}s"
        )
    accuracy = evaluate(model, splits.x_test, splits.y_test)
    elapsed = time.perf_counter() - start
    report(f"test accuracy {accuracy:.4f} on {len(splits.y_test)} images ({elapsed:.0f}s)")
    meta = {
        "model": MODEL_NAME,
        "width": width,
        "test_accuracy": accuracy,
        "num_test": int(len(splits.y_test)),
        "num_train": int(len(splits.y_train)),
        "epochs": epochs,
        "seed": seed,
        "batch_size": BATCH_SIZE,
        "torch_version": torch.__version__,
    }
    return model.eval(), meta


def quick_fit(width: int = 4, epochs: int = 2, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """A deliberately under-trained ``resnet18_digits`` (Adam, no augmentation), for tests and benchmarks that need
    a model whose variants visibly lose accuracy. Returns it in eval mode."""
    torch.manual_seed(seed)
    model = resnet18_digits(width=width)
    splits = load_splits()
    x, y = torch.tensor(splits.x_train), torch.tensor(splits.y_train).long()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Writes a file via a temporary sibling and ``os.replace``.

    Args:
        path: Final destination.
        write: Called with the temporary path to write to.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped files should be world-readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model: nn.Module, meta: dict[str, Any], out_dir: Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """Saves weights (safetensors) and metadata (JSON) atomically.

    Args:
        model: Trained model.
        meta: Metadata to record.
        out_dir: Destination directory (created if needed).

    Returns:
        Paths of the weights and metadata files.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / f"{MODEL_NAME}.safetensors"
    meta_path = out_dir / f"{MODEL_NAME}.json"
    _atomic_write(weights, lambda p: save_file(state, p, metadata={"model": MODEL_NAME}))
    text = json.dumps(meta, indent=2) + "\n"
    _atomic_write(meta_path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    logger.info("wrote %s and %s", weights, meta_path)
    return weights, meta_path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, meta = train(args.epochs, args.seed, progress=lambda msg: print(msg, flush=True))
    weights, meta_path = save(model, meta, args.out_dir)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta_path}")


if __name__ == "__main__":
    main()
