"""Retraining descendants on the teacher's features, and storing variants (safetensors + JSON)."""

from __future__ import annotations

import copy
import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from legocompile.blocks import partition
from legocompile.errors import LegoCompileError
from legocompile.variants import prune_block
from legocompile.variants.retrain import RetrainSettings, retrain_variants, validation_split
from legocompile.variants.store import load_external_variant, load_variant, save_variant, variant_paths
from zoo import resnet18

N_SAMPLES = 160
BATCH = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chain():
    """(teacher blocks, block input examples, inputs): a width-8 ResNet-18 on 1x16x16 cut into 3 blocks."""
    torch.manual_seed(0)
    model = resnet18(8, in_channels=1)
    inputs = np.random.default_rng(0).standard_normal((N_SAMPLES, 1, 16, 16)).astype(np.float32)
    calibrate_batchnorm(model, inputs)
    model.eval()
    blocks = partition(model, torch.from_numpy(inputs[:1]), "auto", max_blocks=3)
    assert len(blocks) == 3
    examples, x = [], torch.from_numpy(inputs[:2])
    with torch.no_grad():
        for b in blocks:
            examples.append(x)
            x = b.module(x)
    return [b.module for b in blocks], examples, inputs


def calibrate_batchnorm(model: nn.Module, inputs: np.ndarray) -> None:
    """Exact BatchNorm statistics of ``inputs`` (as in a trained model), from one cumulative train-mode pass."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model.train()(torch.from_numpy(inputs))
    for bn in bns:
        bn.momentum = 0.1


def make_students(chain, blocks=(0, 1, 2), sparsity=0.5) -> dict:
    teacher, examples, _ = chain
    return {(i, f"s{sparsity}"): prune_block(teacher[i], examples[i], sparsity).module for i in blocks}


class CallCounter:
    """Counts forward calls and samples of a module through a pre-hook."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = self.samples = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        self.samples += args[0].shape[0]


def val_mse(teacher, index: int, student: nn.Module, inputs: np.ndarray, settings: RetrainSettings) -> float:
    """The student's MSE against teacher block ``index`` on the validation split, recomputed independently."""
    _, val_idx = validation_split(len(inputs), settings.val_fraction, settings.seed)
    x = torch.from_numpy(inputs[val_idx])
    sse, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), settings.batch_size):
            a = x[start : start + settings.batch_size]
            for block in teacher[:index]:
                a = block(a)
            diff = student.eval()(a.clone()).double() - teacher[index](a.clone()).double()
            sse, count = sse + float((diff * diff).sum()), count + diff.numel()
    return sse / count


def test_retrain_improves_students_and_keeps_teacher(chain):
    teacher, _, inputs = chain
    before = [copy.deepcopy(m.state_dict()) for m in teacher]
    students = make_students(chain)
    settings = RetrainSettings(epochs=3, lr=1e-3, batch_size=BATCH, patience=4)
    counters = [CallCounter(m) for m in teacher]
    try:
        results = retrain_variants(teacher, students, inputs, settings)
    finally:
        for c in counters:
            c.handle.remove()

    assert set(results) == set(students)
    for key, r in results.items():
        assert r.best_val_mse <= r.initial_val_mse
        assert 1 <= r.epochs_run <= settings.epochs and 0 <= r.best_epoch <= r.epochs_run
        assert not any(m.training for m in students[key].modules())
        recomputed = val_mse(teacher, key[0], students[key], inputs, settings)  # best state restored
        assert recomputed == pytest.approx(r.best_val_mse, rel=1e-6, abs=1e-6)
    assert any(r.best_val_mse < r.initial_val_mse for r in results.values())
    # Features cached: one teacher pass over the data, shared by all students and epochs.
    assert [c.samples for c in counters] == [N_SAMPLES] * 3
    for m, state in zip(teacher, before):
        assert not m.training
        after = m.state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state)


def test_without_cache_teacher_runs_once_per_batch(chain):
    teacher, _, inputs = chain
    students = make_students(chain, blocks=(1,), sparsity=0.5)
    students[(1, "s0.8")] = make_students(chain, blocks=(1,), sparsity=0.8)[(1, "s0.8")]
    settings = RetrainSettings(epochs=2, batch_size=BATCH, patience=5, feature_cache_bytes=0)
    counters = [CallCounter(m) for m in teacher]
    try:
        results = retrain_variants(teacher, students, inputs, settings)
    finally:
        for c in counters:
            c.handle.remove()
    train_idx, val_idx = validation_split(N_SAMPLES, settings.val_fraction, settings.seed)
    train_batches, val_batches = math.ceil(len(train_idx) / BATCH), math.ceil(len(val_idx) / BATCH)
    assert all(r.epochs_run == 2 for r in results.values())
    # Initial validation, then per epoch every train and validation batch: once for both variants.
    assert counters[0].calls == counters[1].calls == val_batches + 2 * (train_batches + val_batches)
    assert counters[0].samples == len(val_idx) + 2 * N_SAMPLES
    assert counters[2].calls == 0  # no student needs block 2


class RecordingProgress:
    def __init__(self) -> None:
        self.stages: list[tuple[str, int]] = []
        self.advanced = 0

    def stage(self, name: str, total: int):
        import contextlib

        self.stages.append((name, total))

        def advance(n: int = 1) -> None:
            self.advanced += n

        return contextlib.nullcontext(advance)


def test_early_stopping_restores_the_best_state(chain):
    teacher, _, inputs = chain
    students = make_students(chain, blocks=(1,))
    original = copy.deepcopy(next(iter(students.values())).state_dict())
    settings = RetrainSettings(epochs=6, lr=50.0, batch_size=BATCH, patience=2)  # far too large: never improves
    progress = RecordingProgress()
    (result,) = retrain_variants(teacher, students, inputs, settings, progress=progress).values()
    assert result.epochs_run == 2 and result.best_epoch == 0
    assert result.best_val_mse == result.initial_val_mse
    restored = next(iter(students.values())).state_dict()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert progress.stages == [("retrain", 6)] and progress.advanced == 6


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("lr", -1.0), ("batch_size", True), ("val_fraction", 1.0), ("patience", 0.5),
     ("feature_cache_bytes", -1), ("lr", float("nan"))],
)
def test_settings_are_validated(field, value):
    with pytest.raises(LegoCompileError, match=field):
        RetrainSettings(**{field: value})


def test_bad_students_are_rejected(chain):
    teacher, _, inputs = chain
    with pytest.raises(LegoCompileError, match="shares weights"):
        retrain_variants(teacher, {(0, "same"): teacher[0]}, inputs, RetrainSettings(epochs=1))
    with pytest.raises(LegoCompileError, match="student key"):
        retrain_variants(teacher, {(3, "x"): copy.deepcopy(teacher[0])}, inputs, RetrainSettings(epochs=1))
    with pytest.raises(LegoCompileError, match="of block 1 fails on the teacher's input of shape"):
        retrain_variants(teacher, {(1, "x"): copy.deepcopy(teacher[0])}, inputs, RetrainSettings(epochs=1))
    with pytest.raises(LegoCompileError, match=r"outputs \(\d+, 10\) but the teacher block outputs"):
        too_deep = copy.deepcopy(nn.Sequential(teacher[1], teacher[2]))
        retrain_variants(teacher, {(1, "x"): too_deep}, inputs, RetrainSettings(epochs=1))


def test_save_load_round_trip(chain, tmp_path):
    teacher, examples, _ = chain
    pruned = prune_block(teacher[1], examples[1], 0.5)
    with torch.no_grad():  # trained-looking weights, not the pruned copies
        for p in pruned.module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    stem = tmp_path / "variants" / "layer2.1-s0.5"
    save_variant(stem, pruned.module, pruned.architecture, {"sparsity": 0.5, "val_mse": 0.1})
    weights_path, json_path = variant_paths(stem)
    assert weights_path.is_file() and json_path.is_file()
    module, meta = load_variant(stem, teacher[1])
    assert meta == {"sparsity": 0.5, "val_mse": 0.1}
    assert not module.training
    with torch.no_grad():
        assert torch.equal(module(examples[1]), pruned.module.eval()(examples[1]))

    with pytest.raises(LegoCompileError, match="missing"):
        load_variant(tmp_path / "nothing", teacher[1])
    other = tmp_path / "other"
    save_variant(other, prune_block(teacher[1], examples[1], 0.8).module, {}, {})
    weights_path.write_bytes(variant_paths(other)[0].read_bytes())
    with pytest.raises(LegoCompileError, match="do not match"):
        load_variant(stem, teacher[1])
    json_path.write_text(json_path.read_text()[:40])
    with pytest.raises(LegoCompileError, match="damaged"):
        load_variant(stem, teacher[1])
    with pytest.raises(LegoCompileError, match="JSON"):
        save_variant(stem, pruned.module, pruned.architecture, {"bad": object()})


EXTERNAL_MODULE = '''
from torch import nn

def make(stride=1):
    return nn.Sequential(nn.Conv2d(16, 8, 3, stride, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 32, 1, 2))

def make_wrong():
    return make(stride=2)
'''


def test_external_variant(tmp_path):
    name = f"ext_variant_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(EXTERNAL_MODULE)
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 32, 1, 2))
    weights = tmp_path / "ext.safetensors"
    save_file(reference.state_dict(), str(weights))
    shapes = {"input_shape": (1, 16, 8, 8), "output_shape": (1, 32, 4, 4)}

    module = load_external_variant(f"{name}:make", weights, search_path=tmp_path, **shapes, block_name="layer2.1")
    assert not module.training
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(module(x), reference.eval()(x))

    with pytest.raises(LegoCompileError, match=r"outputs \(1, 32, 2, 2\) but block layer2.1 outputs \(1, 32, 4, 4\)"):
        load_external_variant(f"{name}:make_wrong", weights, search_path=tmp_path, **shapes, block_name="layer2.1")
    with pytest.raises(LegoCompileError, match="cannot import"):
        load_external_variant("no_such_module_xyz:make", weights, search_path=tmp_path, **shapes)
    bad = tmp_path / "bad.safetensors"
    save_file({"0.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(LegoCompileError, match="do not fit"):
        load_external_variant(f"{name}:make", bad, search_path=tmp_path, **shapes)


class _InterruptAfter:
    """A progress reporter that raises KeyboardInterrupt once ``epochs`` epochs have been reported."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen = epochs, 0

    def stage(self, name, total):
        import contextlib

        @contextlib.contextmanager
        def cm():
            def advance(n=1):
                self.seen += n
                if n and self.seen >= self.epochs:
                    raise KeyboardInterrupt

            yield advance

        return cm()


def test_killed_retraining_resumes_to_the_same_result(chain, tmp_path):
    """Interrupt after 2 of 4 epochs, resume from the checkpoint: weights and results equal an uninterrupted run."""
    teacher, _, inputs = chain
    settings = RetrainSettings(epochs=4, batch_size=BATCH, patience=10)
    reference = make_students(chain)
    expected = retrain_variants(teacher, reference, inputs, settings)

    stem = tmp_path / "ckpt"
    students = make_students(chain)
    with pytest.raises(KeyboardInterrupt):
        retrain_variants(teacher, students, inputs, settings, progress=_InterruptAfter(2), checkpoint=stem)
    assert Path(f"{stem}.json").exists()
    assert json.loads(Path(f"{stem}.json").read_text())["epoch"] == 2

    resumed = make_students(chain)  # a fresh process would rebuild the pruned students from disk like this
    got = retrain_variants(teacher, resumed, inputs, settings, checkpoint=stem)
    for key in expected:
        assert got[key].best_val_mse == pytest.approx(expected[key].best_val_mse, rel=1e-6)
        assert got[key].epochs_run == expected[key].epochs_run == 4
        for (name, a), b in zip(reference[key].state_dict().items(), resumed[key].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_foreign_checkpoint_is_ignored(chain, tmp_path):
    teacher, _, inputs = chain
    settings = RetrainSettings(epochs=1, batch_size=BATCH)
    stem = tmp_path / "ckpt"
    retrain_variants(teacher, make_students(chain, blocks=(0,)), inputs, settings, checkpoint=stem)
    # a different set of students must not pick up block 0's state
    results = retrain_variants(teacher, make_students(chain, blocks=(1, 2)), inputs, settings, checkpoint=stem)
    assert set(results) == {(1, "s0.5"), (2, "s0.5")}
    assert all(r.epochs_run == 1 for r in results.values())
