"""Resolve what to build: a ``legocompile.toml`` project, or the built-in example when there is none."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.config import BuildConfig, ProjectConfig, load_config
from legocompile.errors import LegoCompileError
from legocompile.model import import_object, load_model

EXAMPLE_PROVIDER = "legocompile.project:example_dataset"
EXAMPLE_SPARSITIES = (0.0, 0.4, 0.8)
DEFAULT_CONFIG = "legocompile.toml"


@dataclass(frozen=True)
class Project:
    config: ProjectConfig
    is_example: bool

    def load_model(self):
        m = self.config.model  # the examples' factories load their shipped weights themselves
        return load_model(m.factory, m.weights, search_path=self.config.root)

    def load_data(self) -> "Dataset":
        return load_dataset(self.config.data_provider, search_path=self.config.root)

    def example_input(self) -> np.ndarray:
        return np.zeros(self.config.model.input_shape, dtype=np.float32)


@dataclass(frozen=True)
class Dataset:
    """What a dataset provider gives: calibration inputs, the evaluation split, and optional training inputs."""

    calibration: Any
    eval_x: Any
    eval_y: Any
    train: Any = None  # inputs the descendants are retrained on; default: the calibration inputs


def load_dataset(provider: str, *, search_path: Path | None = None) -> Dataset:
    """Call a dataset provider.

    It returns ``(calibration_inputs, (eval_inputs, eval_labels))``, or a mapping with keys ``calibration``,
    ``eval`` (a pair) and optionally ``train``.
    """
    fn = import_object(provider, field="[data].provider", search_path=search_path)
    data = fn()
    try:
        if isinstance(data, dict):
            (ex, ey), calib, train = data["eval"], data["calibration"], data.get("train")
        else:
            calib, (ex, ey) = data
            train = None
    except (TypeError, ValueError, KeyError):
        raise LegoCompileError(
            f"[data].provider {provider} must return (calibration_inputs, (eval_inputs, eval_labels)) or a dict "
            "with keys calibration, eval and optionally train"
        ) from None
    return Dataset(calib, ex, ey, train)


def example_dataset() -> dict:
    """The built-in example's data: digits, with the whole training split for retraining descendants."""
    from legocompile.examples.digits import dataset, load_splits

    calib, (ex, ey) = dataset()
    return {"calibration": calib, "eval": (ex, ey), "train": load_splits().x_train}


def example_config(out: Path | None = None) -> ProjectConfig:
    from legocompile.config import ModelConfig, VariantsConfig
    from legocompile.examples import EXAMPLE_INPUT_SHAPE

    cwd = Path.cwd()
    return ProjectConfig(
        model=ModelConfig(name="resnet18_digits", factory="legocompile.examples:load_example_model", weights=None,
                          input_shape=tuple(EXAMPLE_INPUT_SHAPE)),
        data_provider=EXAMPLE_PROVIDER,
        build=BuildConfig(work_dir=cwd / "legocompile-work", out=(out or cwd / "legocompile-out")),
        variants=VariantsConfig(sparsities=EXAMPLE_SPARSITIES, epochs=10),  # 10 suffices: see bench_variants.py
        root=cwd,
    )


def segmentation_example_config(out: Path | None = None) -> ProjectConfig:
    """The second built-in example: per-pixel digit classes (legocompile.examples.segmentation), measured in mIoU."""
    from legocompile.config import BlocksConfig, ModelConfig, TaskConfig, VariantsConfig
    from legocompile.examples import segmentation as seg

    cwd = Path.cwd()
    return ProjectConfig(
        model=ModelConfig(name=seg.MODEL_NAME, factory="legocompile.examples.segmentation:load_model", weights=None,
                          input_shape=seg.INPUT_SHAPE),
        data_provider="legocompile.examples.segmentation:dataset",
        task=TaskConfig(metric="miou"),
        blocks=BlocksConfig(cut=("stem", "hg1", "hg2", "hg3", "head")),  # the hourglasses: each keeps its own skip
        build=BuildConfig(work_dir=cwd / "legocompile-work", out=(out or cwd / "legocompile-out-segmentation")),
        variants=VariantsConfig(sparsities=EXAMPLE_SPARSITIES, epochs=10),
        root=cwd,
    )


EXAMPLES = {"classification": example_config, "segmentation": segmentation_example_config}


def resolve_project(config: str | Path | None, example: str | None = None) -> Project:
    """``example`` (a name in ``EXAMPLES``) if given, else ``--config`` if given, else ``./legocompile.toml`` if
    present, else the built-in classification example."""
    if example is not None:
        if config is not None:
            raise LegoCompileError("--example and --config exclude each other: build a built-in example or a project")
        if example not in EXAMPLES:
            raise LegoCompileError(f"unknown example {example!r}; choose from {', '.join(EXAMPLES)}")
        return Project(EXAMPLES[example](), is_example=True)
    if config is not None:
        return Project(load_config(config), is_example=False)
    if Path(DEFAULT_CONFIG).is_file():
        return Project(load_config(DEFAULT_CONFIG), is_example=False)
    return Project(example_config(), is_example=True)


def with_overrides(project: Project, *, precisions=None, out=None, backend=None, frame_gap_ms=None) -> Project:
    if frame_gap_ms is not None:
        project = replace(project, config=replace(project.config, profile=replace(project.config.profile,
                                                                                  frame_gap_ms=frame_gap_ms)))
    build = project.config.build
    if precisions is not None:
        build = replace(build, precisions=precisions)
    if backend is not None:
        build = replace(build, backend=backend)
    if out is not None:
        build = replace(build, out=Path(out).resolve())
    return replace(project, config=replace(project.config, build=build))
