"""Per-epoch retraining checkpoints, so a killed build resumes retraining where it stopped.

A checkpoint holds, for every student, its current weights, its best weights so far, Adam's moments and its
counters, plus the state of the shuffling RNG. Resuming from it reproduces the uninterrupted run. Tensors go to
``<stem>.safetensors`` and everything else to ``<stem>.json``, written last and holding the tensors' sha256, so a
torn pair is recognised and ignored (retraining then starts over).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from legocompile._log import logger
from legocompile.workspace import atomic_write_bytes, atomic_write_json, sha256_file

COUNTERS = ("initial_mse", "best_mse", "last_mse", "best_epoch", "epochs_run", "stale_epochs", "stopped", "seconds")
FORMAT = 1


def _paths(stem: Path) -> tuple[Path, Path]:
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


def save_checkpoint(stem: Path, epoch: int, students, rng) -> None:
    """Write the state after ``epoch`` (1-based) of ``students`` (retrain's ``_Student`` objects)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"format": FORMAT, "epoch": epoch, "rng": rng.bit_generator.state, "students": []}
    for k, s in enumerate(students):
        for name, t in s.module.state_dict().items():
            tensors[f"{k}/module/{name}"] = t.detach().cpu().contiguous().clone()
        for name, t in s.best_state.items():
            tensors[f"{k}/best/{name}"] = t.detach().cpu().contiguous().clone()
        optimizer = None
        if s.optimizer is not None:
            sd = s.optimizer.state_dict()
            keys = {}
            for pid, state in sd["state"].items():
                keys[str(pid)] = list(state)
                for name, value in state.items():
                    value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                    tensors[f"{k}/adam/{pid}/{name}"] = value.detach().cpu().contiguous().clone()
            optimizer = {"param_groups": sd["param_groups"], "state_keys": keys}
        meta["students"].append({"key": list(s.key), "optimizer": optimizer} | {c: getattr(s, c) for c in COUNTERS})
    weights, doc = _paths(stem)
    atomic_write_bytes(weights, save(tensors))
    meta["sha256"] = sha256_file(weights)
    atomic_write_json(doc, meta)


def load_checkpoint(stem: Path, students, rng) -> int:
    """Restore ``students`` and ``rng`` from a checkpoint; return the epoch it was taken after (0: none usable)."""
    from safetensors.torch import load_file

    weights, doc = _paths(stem)
    if not doc.exists() or not weights.exists():
        return 0
    try:
        meta = json.loads(doc.read_text())
        students = list(students)
        if (meta.get("format") != FORMAT or meta.get("sha256") != sha256_file(weights)
                or [tuple(m["key"]) for m in meta["students"]] != [tuple(s.key) for s in students]):
            logger.info("retraining checkpoint %s does not match this run; starting over", doc.name)
            return 0
        tensors = load_file(str(weights))
        for k, (s, m) in enumerate(zip(students, meta["students"])):
            s.module.load_state_dict({n: tensors[f"{k}/module/{n}"] for n in s.module.state_dict()})
            s.best_state = {n: tensors[f"{k}/best/{n}"] for n in s.best_state}
            if s.optimizer is not None and m["optimizer"] is not None:
                state = {int(pid): {name: tensors[f"{k}/adam/{pid}/{name}"] for name in names}
                         for pid, names in m["optimizer"]["state_keys"].items()}
                s.optimizer.load_state_dict({"state": state, "param_groups": m["optimizer"]["param_groups"]})
            for c in COUNTERS:
                setattr(s, c, m[c])
        rng.bit_generator.state = meta["rng"]
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # a damaged or foreign checkpoint: start over
        logger.warning("ignoring retraining checkpoint %s (%s)", doc.name, e)
        return 0
    logger.info("resuming retraining after epoch %d from %s", meta["epoch"], doc.name)
    return int(meta["epoch"])


def remove_checkpoint(stem: Path) -> None:
    for p in _paths(stem):
        p.unlink(missing_ok=True)
