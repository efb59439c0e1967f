"""Shared fixtures: one tiny bundle built once per test session, from a real (if tiny) trained-looking chain.

Runtimes use per-session pools by default, so plain ``onnxruntime.InferenceSession``s in the tests keep working;
the opt-in shared pool is tested in a subprocess (test_runtime.py).
"""

from __future__ import annotations

import os


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    gpu = _has_gpu()
    trt = _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (none here)"))
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (not installed)"))


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    """A real TensorRT, not the type stubs (``tensorrt-stubs`` installs an importable, empty ``tensorrt``)."""
    try:
        import tensorrt
    except Exception:  # absent, or its libraries do not load
        return False
    return hasattr(tensorrt, "Builder") and hasattr(tensorrt, "__version__")


@pytest.fixture(scope="session")
def digits_small():
    """Digits at 32x32: 128 calibration inputs and 200 evaluation samples (real data, offline)."""
    from legocompile.examples.digits import load_splits

    s = load_splits()
    return s.x_train[:128], (s.x_test[:200], s.y_test[:200])


@pytest.fixture(scope="session")
def tiny_model():
    """A width-4 CIFAR ResNet-18 (1 input channel), briefly fitted to digits so that accuracies mean something."""
    from legocompile.examples.train import quick_fit

    return quick_fit(width=4, epochs=2)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model, digits_small):
    """A bundle with fp32, fp16 and int8 engines for the tiny model (profile runs kept short)."""
    import legocompile
    from legocompile.config import ProfileConfig
    from legocompile.pipeline import BuildReport

    root = tmp_path_factory.mktemp("tiny")
    calib, eval_data = digits_small
    report = BuildReport(bundle=root / "bundle")
    path = legocompile.compile(
        tiny_model,
        np.zeros((1, 1, 32, 32), np.float32),
        calibration_data=calib,
        eval_data=eval_data,
        out=root / "bundle",
        work_dir=root / "work",
        precisions=("fp32", "fp16", "int8"),
        max_blocks=4,
        profile=ProfileConfig(warmup=3, runs=50),
        model_name="tiny",
        report=report,
    )
    return {"path": path, "work": root / "work", "report": report, "model": tiny_model,
            "calib": calib, "eval": eval_data}
