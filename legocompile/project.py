"""Resolve what to build: a ``legocompile.toml`` project, or the built-in example when there is none."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from legocompile.config import BuildConfig, ProjectConfig, load_config
from legocompile.errors import LegoCompileError
from legocompile.model import import_object, load_model

EXAMPLE_PROVIDER = "legocompile.examples.digits:dataset"
DEFAULT_CONFIG = "legocompile.toml"


@dataclass(frozen=True)
class Project:
    config: ProjectConfig
    is_example: bool

    def load_model(self):
        if self.is_example:
            from legocompile.examples import load_example_model

            return load_example_model()
        m = self.config.model
        return load_model(m.factory, m.weights, search_path=self.config.root)

    def load_data(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        return load_dataset(self.config.data_provider, search_path=self.config.root)

    def example_input(self) -> np.ndarray:
        return np.zeros(self.config.model.input_shape, dtype=np.float32)


def load_dataset(provider: str, *, search_path: Path | None = None) -> tuple[Any, tuple[Any, Any]]:
    """Call a dataset provider and check it returns ``(calibration_inputs, (eval_inputs, eval_labels))``."""
    fn = import_object(provider, field="[data].provider", search_path=search_path)
    data = fn()
    try:
        calib, (ex, ey) = data
    except (TypeError, ValueError):
        raise LegoCompileError(
            f"[data].provider {provider} must return (calibration_inputs, (eval_inputs, eval_labels))"
        ) from None
    return calib, (ex, ey)


def example_config(out: Path | None = None) -> ProjectConfig:
    from legocompile.config import ModelConfig
    from legocompile.examples import EXAMPLE_INPUT_SHAPE

    cwd = Path.cwd()
    return ProjectConfig(
        model=ModelConfig(name="resnet18_digits", factory="legocompile.examples:load_example_model", weights=None,
                          input_shape=tuple(EXAMPLE_INPUT_SHAPE)),
        data_provider=EXAMPLE_PROVIDER,
        build=BuildConfig(work_dir=cwd / "legocompile-work", out=(out or cwd / "legocompile-out")),
        root=cwd,
    )


def resolve_project(config: str | Path | None) -> Project:
    """``--config`` if given, else ``./legocompile.toml`` if present, else the built-in example."""
    if config is not None:
        return Project(load_config(config), is_example=False)
    if Path(DEFAULT_CONFIG).is_file():
        return Project(load_config(DEFAULT_CONFIG), is_example=False)
    return Project(example_config(), is_example=True)


def with_overrides(project: Project, *, precisions=None, out=None) -> Project:
    build = project.config.build
    if precisions is not None:
        build = replace(build, precisions=precisions)
    if out is not None:
        build = replace(build, out=Path(out).resolve())
    return replace(project, config=replace(project.config, build=build))
