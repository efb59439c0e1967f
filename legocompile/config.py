"""``legocompile.toml`` → frozen dataclasses.

Every validation error is a one-line :class:`LegoCompileError` that names the offending field, e.g.
``legocompile.toml: [model].input_shape must be a list of positive integers, got "1x3x32x32"``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legocompile.errors import LegoCompileError

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Pruned groups keep a multiple of this many channels (measured: benchmarks/bench_variants.py --latency).
DEFAULT_CHANNEL_MULTIPLE = 8


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    factory: str  # "pkg.mod:fn" returning an nn.Module
    weights: Path | None  # safetensors, or a state_dict loaded with weights_only=True
    input_shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class BlocksConfig:
    cut: str | tuple[str, ...] = "auto"  # "auto" or module paths that end each block
    max_blocks: int | None = 8


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    method: str = "minmax"
    num_samples: int = 256
    percentile: float = 99.999


MAX_FRAME_GAP_MS = 1000.0


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    warmup: int = 20
    runs: int = 100
    batch_size: int = 1
    threads: int = 2
    # Idle time before each timed frame, as the application serves them: 0 times frames back to back (a hot loop);
    # 33 models a 30 Hz camera, whose isolated frames run slower (cold caches, sleeping pool threads).
    frame_gap_ms: float = 0.0

    def __post_init__(self) -> None:
        gap = self.frame_gap_ms
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap <= MAX_FRAME_GAP_MS:
            raise LegoCompileError(f"frame_gap_ms must be a number of milliseconds in [0, {MAX_FRAME_GAP_MS:g}], "
                                   f"got {gap!r}")

    def to_json(self) -> dict:
        """The manifest's ``settings.profile`` (``frame_gap_ms`` only when set, so older bundles read the same)."""
        d: dict = {"batch_size": self.batch_size, "warmup": self.warmup, "runs": self.runs, "threads": self.threads}
        if self.frame_gap_ms:
            d["frame_gap_ms"] = float(self.frame_gap_ms)
        return d


@dataclass(frozen=True, kw_only=True)
class ExternalVariantConfig:
    block: str
    name: str
    factory: str
    weights: Path
    sparsity: float | None = None


@dataclass(frozen=True, kw_only=True)
class VariantsConfig:
    sparsities: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    patience: int = 4
    val_fraction: float = 0.1
    channel_multiple: int = DEFAULT_CHANNEL_MULTIPLE
    external: tuple[ExternalVariantConfig, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What the model is for: the metric accuracy is measured in (see :mod:`legocompile.profile.accuracy`)."""

    metric: str = "top1"  # "top1" | "miou" | "package.module:function" (the project's own code, build time only)


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """The accuracy gate: an engine whose error exceeds its precision's tolerance is not selectable.

    Engine errors are relative L2 (``||y - y_ref|| / ||y_ref||``) against the variant's fp32 ONNX on held-out block
    inputs; the export error is ``max |ONNX - PyTorch| / max |PyTorch|`` on real block inputs.
    """

    export: float = 1e-3
    fp32: float = 1e-3
    fp16: float = 1e-2
    int8: float = 5e-2

    def of(self, precision: str) -> float:
        return float(getattr(self, precision))


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    precisions: tuple[str, ...] = ("fp32", "int8")
    backend: str = "onnxruntime"
    work_dir: Path = Path("legocompile-work")
    out: Path = Path("legocompile-out")
    int8_format: str = "auto"  # auto (from the CPU) | u8s8 | u8u8 | u8s8-reduce-range: see calibration.recipe
    tolerance: Tolerances = field(default_factory=Tolerances)


@dataclass(frozen=True, kw_only=True)
class ProjectConfig:
    model: ModelConfig
    data_provider: str  # "pkg.mod:fn" returning (calibration_inputs, (eval_inputs, eval_labels))
    task: TaskConfig = field(default_factory=TaskConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    root: Path = Path(".")  # the project file's folder: relative paths and imports resolve from here


def normalize_precisions(precisions: Any, where: str = "precisions") -> tuple[str, ...]:
    """Validate precisions; fp32 is always built (it is every block's reference), and comes first."""
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    if not isinstance(precisions, (list, tuple)) or not precisions:
        raise LegoCompileError(f"{where} must be a non-empty list drawn from {', '.join(PRECISIONS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise LegoCompileError(f"{where}: unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p == "fp32" or p in precisions)


class _Section:
    """Reads one TOML table, naming ``[section].key`` in every error and rejecting unknown keys."""

    def __init__(self, source: str, name: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise LegoCompileError(f"{source}: [{name}] must be a table")
        self.source, self.name, self.table = source, name, dict(table)

    def _err(self, key: str, what: str, value: Any) -> LegoCompileError:
        return LegoCompileError(f"{self.source}: [{self.name}].{key} must be {what}, got {value!r}")

    def get(self, key: str, kind: type | tuple[type, ...], what: str, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.table:
            if default is dataclasses.MISSING:
                raise LegoCompileError(f"{self.source}: [{self.name}].{key} is required ({what})")
            return default
        value = self.table.pop(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self._err(key, what, value)
        return value

    def positive_int(self, key: str, default: Any = dataclasses.MISSING) -> int:
        value = self.get(key, int, "a positive integer", default)
        if value is not None and value <= 0:
            raise self._err(key, "a positive integer", value)
        return value

    def finish(self) -> None:
        if self.table:
            raise LegoCompileError(f"{self.source}: unknown key [{self.name}].{sorted(self.table)[0]}")


def _import_spec(section: _Section, key: str) -> str:
    spec = section.get(key, str, 'an import spec "package.module:function"')
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise section._err(key, 'an import spec "package.module:function"', spec)
    return spec


def load_config(path: str | Path) -> ProjectConfig:
    """Parse and validate a ``legocompile.toml``."""
    path = Path(path)
    if not path.is_file():
        raise LegoCompileError(f"project file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise LegoCompileError(f"{path.name}: not valid TOML ({e})") from None
    src, root = path.name, path.parent.resolve()
    known = {"model", "data", "task", "blocks", "calibration", "profile", "build", "variants"}
    for key in doc:
        if key not in known:
            raise LegoCompileError(f"{src}: unknown section [{key}]; expected one of {', '.join(sorted(known))}")

    m = _Section(src, "model", doc.get("model", {}))
    factory = _import_spec(m, "factory")
    name = m.get("name", str, "a string", factory.split(":")[1])
    weights = m.get("weights", str, "a path to .safetensors or a state_dict file", None)
    shape = m.get("input_shape", list, "a list of positive integers, e.g. [1, 3, 32, 32]")
    if len(shape) < 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise m._err("input_shape", "a list of positive integers, e.g. [1, 3, 32, 32]", shape)
    m.finish()
    weights_path = None
    if weights is not None:
        weights_path = (root / weights).resolve()
        if not weights_path.is_file():
            raise LegoCompileError(f"{src}: [model].weights file not found: {weights_path}")
    model = ModelConfig(name=name, factory=factory, weights=weights_path, input_shape=tuple(shape))

    d = _Section(src, "data", doc.get("data", {}))
    provider = _import_spec(d, "provider")
    d.finish()

    task = _task(src, doc.get("task", {}))

    b = _Section(src, "blocks", doc.get("blocks", {}))
    cut = b.get("cut", (str, list), '"auto" or a list of module paths', "auto")
    if isinstance(cut, str) and cut != "auto":
        raise b._err("cut", '"auto" or a list of module paths', cut)
    if isinstance(cut, list) and (not cut or not all(isinstance(c, str) and c for c in cut)):
        raise b._err("cut", '"auto" or a list of module paths', cut)
    blocks = BlocksConfig(cut=cut if isinstance(cut, str) else tuple(cut), max_blocks=b.positive_int("max_blocks", 8))
    b.finish()

    c = _Section(src, "calibration", doc.get("calibration", {}))
    method = c.get("method", str, f"one of {', '.join(CALIBRATION_METHODS)}", "minmax")
    if method not in CALIBRATION_METHODS:
        raise c._err("method", f"one of {', '.join(CALIBRATION_METHODS)}", method)
    percentile = c.get("percentile", (int, float), "a number in (0, 100]", 99.999)
    if not 0 < percentile <= 100:
        raise c._err("percentile", "a number in (0, 100]", percentile)
    calibration = CalibrationConfig(
        method=method, num_samples=c.positive_int("num_samples", 256), percentile=float(percentile)
    )
    c.finish()

    p = _Section(src, "profile", doc.get("profile", {}))
    gap_what = f"a number of milliseconds in [0, {MAX_FRAME_GAP_MS:g}]"
    frame_gap_ms = p.get("frame_gap_ms", (int, float), gap_what, 0.0)
    if not 0 <= frame_gap_ms <= MAX_FRAME_GAP_MS:
        raise p._err("frame_gap_ms", gap_what, frame_gap_ms)
    profile = ProfileConfig(
        warmup=p.positive_int("warmup", 20),
        runs=p.positive_int("runs", 100),
        batch_size=p.positive_int("batch_size", 1),
        threads=p.positive_int("threads", 2),
        frame_gap_ms=float(frame_gap_ms),
    )
    if profile.runs < 50:
        raise p._err("runs", "at least 50 (medians and p90 need enough samples)", profile.runs)
    p.finish()

    u = _Section(src, "build", doc.get("build", {}))
    precisions = normalize_precisions(
        u.get("precisions", list, f"a list drawn from {', '.join(PRECISIONS)}", ["fp32", "int8"]),
        f"{src}: [build].precisions",
    )
    from legocompile.backends import BACKENDS  # the registry: one line per backend folder

    backend = u.get("backend", str, f"one of {', '.join(BACKENDS)}", "onnxruntime")
    if backend not in BACKENDS:
        raise u._err("backend", f"one of {', '.join(BACKENDS)}", backend)
    from calibration.recipe import FORMATS

    int8_format = u.get("int8_format", str, f"one of {', '.join(FORMATS)}", "auto")
    if int8_format not in FORMATS:
        raise u._err("int8_format", f"one of {', '.join(FORMATS)}", int8_format)
    t = _Section(src, "build.tolerance", u.get("tolerance", dict, "a table of tolerances", {}))
    defaults = Tolerances()
    tolerance = Tolerances(**{
        k: _number(t, k, "a positive number (relative error)", getattr(defaults, k), lambda x: x > 0)
        for k in ("export", "fp32", "fp16", "int8")
    })
    t.finish()
    build = BuildConfig(
        precisions=precisions,
        backend=backend,
        work_dir=(root / u.get("work_dir", str, "a folder path", "legocompile-work")).resolve(),
        out=(root / u.get("out", str, "a folder path", "legocompile-out")).resolve(),
        int8_format=int8_format,
        tolerance=tolerance,
    )
    u.finish()
    return ProjectConfig(
        model=model,
        data_provider=provider,
        task=task,
        blocks=blocks,
        calibration=calibration,
        profile=profile,
        build=build,
        variants=_variants(src, root, doc.get("variants", {})),
        root=root,
    )


def _task(src: str, table: Any) -> TaskConfig:
    from legocompile.profile.accuracy import BUILTIN_METRICS

    t = _Section(src, "task", table)
    what = f'one of {", ".join(BUILTIN_METRICS)} or an import spec "package.module:function"'
    metric = t.get("metric", str, what, "top1")
    if metric not in BUILTIN_METRICS and (metric.count(":") != 1 or not all(metric.split(":"))):
        raise t._err("metric", what, metric)
    t.finish()
    return TaskConfig(metric=metric)


def _number(section: _Section, key: str, what: str, default: float, ok) -> float:
    value = section.get(key, (int, float), what, default)
    if not ok(value):
        raise section._err(key, what, value)
    return float(value)


def _variants(src: str, root: Path, table: Any) -> VariantsConfig:
    v = _Section(src, "variants", table)
    what = "a list of sparsities in [0, 1), e.g. [0.0, 0.4, 0.8]"
    sparsities = v.get("sparsities", list, what, [0.0, 0.2, 0.4, 0.6, 0.8])
    if not sparsities or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1
                                 for x in sparsities):
        raise v._err("sparsities", what, sparsities)
    externals = []
    for k, entry in enumerate(v.get("external", list, "an array of tables [[variants.external]]", [])):
        e = _Section(src, f"variants.external.{k}", entry)
        weights = (root / e.get("weights", str, "a weights file path")).resolve()
        if not weights.is_file():
            raise LegoCompileError(f"{src}: [variants.external.{k}].weights file not found: {weights}")
        sp = e.get("sparsity", (int, float), "a number in [0, 1)", None)
        externals.append(ExternalVariantConfig(
            block=e.get("block", str, "a block name (see legocompile inspect)"),
            name=e.get("name", str, "a variant name"),
            factory=_import_spec(e, "factory"), weights=weights, sparsity=None if sp is None else float(sp),
        ))
        e.finish()
    cfg = VariantsConfig(
        sparsities=tuple(sorted({float(x) for x in sparsities} | {0.0})),
        epochs=v.positive_int("epochs", 20),
        lr=_number(v, "lr", "a positive learning rate", 1e-3, lambda x: x > 0),
        batch_size=v.positive_int("batch_size", 64),
        patience=v.positive_int("patience", 4),
        val_fraction=_number(v, "val_fraction", "a fraction in (0, 1)", 0.1, lambda x: 0 < x < 1),
        channel_multiple=v.positive_int("channel_multiple", DEFAULT_CHANNEL_MULTIPLE),
        external=tuple(externals),
    )
    v.finish()
    return cfg
