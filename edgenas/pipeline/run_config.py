"""The `edgenas run` config (TOML): dataset, supernet, devices with budgets, export formats, output folder.

Every key's type, range and default is a setting (`edgenas.settings`): the same as the matching flag of the single
commands (`edgenas predictor fit --samples`, `edgenas calibrate --budget`, `edgenas search --top-k` ...).

```toml
out = "edgenas-out"            # everything goes here (relative paths are relative to the config file)
seed = 0

[train]
dataset = "digits"             # digits | shapes | folder:PATH | imagenet:PATH | cifar10:PATH | idx:PATH
preset = "tiny"                # training preset (tiny | small | ofa | finetune)
# init = "ofa-supernet.pt"     # start from this supernet (edgenas train --init; its space; a new classifier)
# config = "train.toml"        # a training config file (edgenas train --config)
# checkpoint = "runs/x/supernet.pt"   # use an existing supernet instead of training one
# time_budget = 600            # seconds of training, spread over the phases (edgenas train --time-budget)
# total_steps = 220            # or exactly this many steps, spread over the phases (edgenas train --total-steps)

[predictor]
samples = 1000                 # subnets evaluated for the accuracy predictor (test ones included)
test = 200
# bn_batches = 8               # training batches of 64 images each subnet's BatchNorm is recalibrated on

[search]
algorithm = "evolution"        # evolution | nsga2 | random | rl (edgenas search --algorithm)
population = 100               # archs per generation (4 or more)
# generations = 500            # default: the algorithm's (500 for evolution, 100 for nsga2, random and rl)
top_k = 3                      # candidates exported and measured per budget (the defaults: edgenas.search.search_settings)

[export]
formats = ["onnx", "tflite", "tflite-int8"]
# max_int8_drop_points = 1.0   # an int8 file fails when its accuracy drop (paired, on validation + holdout
                               # images) is above this even at its 95 % interval's low end

[[devices]]
name = "local"                 # devices/NAME.toml, or a path to a device file
precision = "fp32"             # fp32 | int8 (what is deployed and measured)
budgets_ms = [2.0, 4.0]        # latency budgets; or budget_quantiles = [0.3, 0.7] of the space's latency range
calibration = "table"          # table (latency table + whole-subnet correction) | whole-model | transfer
calibration_budget = 100       # whole-subnet measurements (on top of the table; for transfer: 10 is typical)
holdout = 50                   # held-out subnets measured to show calibration quality
calibration_rounds = 5         # windows of the subnets the fit is least sure of; 0: every subnet in the table's window
# max_sram_kb = 256            # memory limits (microcontrollers), at the deployed precision
# max_flash_kb = 1024
# max_macs = 300               # compute limit in millions of MACs (as edgenas search --max-macs)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.data import check_dataset_spec
from edgenas.devices.device_files import load_config as load_device_config
from edgenas.errors import UsageError, did_you_mean
from edgenas.export.formats import FORMATS
from edgenas.inputs import MIB, check_value, output_dir, read_json, read_toml
from edgenas.search.registry import ALGORITHMS
from edgenas.settings import KNOBS, knob_field, read_table, setting
from edgenas.train.config import PRESETS, load_config

PRECISIONS = ("fp32", "int8")
CALIBRATIONS = ("table", "whole-model", "transfer")


@dataclass(frozen=True)
class DeviceTarget:
    """One device of a run, with its budgets and limits (a `[[devices]]` table; each field's setting is its key's
    type, range and default)."""

    name: str
    precision: str = setting("fp32", choices=PRECISIONS, help="what is deployed and measured")
    budgets_ms: tuple[float, ...] = ()
    budget_quantiles: tuple[float, ...] = ()
    max_sram_kb: float | None = knob_field("max_sram_kb")
    max_flash_kb: float | None = knob_field("max_flash_kb")
    max_macs: float | None = knob_field("max_macs")  # millions of MACs, as `edgenas search --max-macs`
    calibration: str = setting("table", choices=CALIBRATIONS, help="table | whole-model | transfer (from the devices "
                               "calibrated before it in the run)")
    calibration_budget: int = knob_field("calibration_budget")
    holdout: int = knob_field("holdout")
    calibration_rounds: int = knob_field("calibration_rounds")

    @property
    def label(self) -> str:
        return f"{Path(self.name).stem}-{self.precision}"


@dataclass(frozen=True)
class TrainSection:
    """`[train]`: how the supernet is made (or which one is used)."""

    dataset: str = setting("digits", help="a dataset spec: digits | shapes | folder:PATH | cifar10:PATH | idx:PATH")
    preset: str = setting("tiny", help="a training preset")
    config: str | None = setting(None, kind=str, optional=True, help="a training config file")
    checkpoint: str | None = setting(None, kind=str, optional=True, help="an existing supernet")
    init: str | None = setting(None, kind=str, optional=True, help="a supernet to fine-tune from")
    steps_scale: float | None = knob_field("steps_scale")
    batch_size: int | None = knob_field("batch_size")
    time_budget: float | None = knob_field("time_budget")
    total_steps: int | None = knob_field("total_steps")


@dataclass(frozen=True)
class PredictorSection:
    """`[predictor]`: the accuracy predictor's subnets."""

    samples: int = knob_field("samples")
    test: int = knob_field("test")
    bn_batches: int = knob_field("bn_batches")


@dataclass(frozen=True)
class SearchSection:
    """`[search]`: the algorithm and its counts (one default each, as `edgenas search`'s flags)."""

    algorithm: str = setting("evolution", help="a search algorithm")
    population: int = knob_field("population")
    generations: int | None = knob_field("generations")
    top_k: int = knob_field("top_k")


@dataclass(frozen=True)
class ExportSection:
    """`[export]`: the formats shipped and the int8 check's limit."""

    max_int8_drop_points: float = knob_field("max_int8_drop_points")


@dataclass(frozen=True)
class RunConfig:
    out: Path
    dataset: str = "digits"
    preset: str = "tiny"
    train_config: Path | None = None
    checkpoint: Path | None = None
    init: Path | None = None  # fine-tune from this supernet (edgenas train --init)
    train_overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = KNOBS["seed"].default
    predictor_samples: int = KNOBS["samples"].default
    predictor_test: int = KNOBS["test"].default
    bn_batches: int = KNOBS["bn_batches"].default  # training batches (of 64) a subnet's BatchNorm is recalibrated on
    algorithm: str = "evolution"
    population: int = KNOBS["population"].default
    generations: int | None = None  # the algorithm's default
    top_k: int = KNOBS["top_k"].default
    formats: tuple[str, ...] = ("onnx", "tflite", "tflite-int8")
    max_int8_drop_points: float = KNOBS["max_int8_drop_points"].default  # the int8 check's limit (export.verify)
    devices: tuple[DeviceTarget, ...] = ()
    source: str = "<config>"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("out", "train_config", "checkpoint", "init"):
            d[key] = str(d[key]) if d[key] is not None else None
        d["train_overrides"] = dict(self.train_overrides)
        return d

    def train_config_of(self, load_config: Any) -> Any:
        """The training config this run trains with (`edgenas.train.config.load_config` handed in): the preset, the
        file, the run's dataset and seed and [train] settings; with `init`, its supernet's space."""
        space = None
        if self.init is not None:
            # deferred: torch loads only when this runs, not on import
            from edgenas.train.finetune import init_space_name

            space = init_space_name(self.init)
        tconfig = load_config(self.train_config, preset=self.preset, dataset=self.dataset, seed=self.seed,
                              batch_size=self.train_overrides.get("batch_size"),
                              time_budget=self.train_overrides.get("time_budget"), space=space,
                              init=str(self.init) if self.init is not None else None)
        if "steps_scale" in self.train_overrides:
            tconfig = tconfig.scale_epochs(self.train_overrides["steps_scale"])
        return tconfig


_TOP = {"out", "seed", "train", "predictor", "search", "export", "devices"}
_SECTIONS = {"train": TrainSection, "predictor": PredictorSection, "search": SearchSection, "export": ExportSection}
_SECTION_EXTRA = {"export": frozenset({"formats"})}  # keys checked by their own reader below


def _bad(source: str, key: str, message: str) -> UsageError:
    return UsageError(f"{source}: {key}: {message}")


def parse_run_config(data: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """Validate a run config; every problem is one line naming the file, the key and what is expected (each key's
    type, range and default are its setting's: `edgenas.settings`, the same as the matching flag's)."""
    base_dir = base_dir or Path.cwd()
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _bad(source, unknown[0], f"unknown key{did_you_mean(unknown[0], _TOP)}; expected one of {', '.join(sorted(_TOP))}")
    sections = {name: read_table(cls, data.get(name, {}), source=source, section=name,
                                 extra=_SECTION_EXTRA.get(name, frozenset()))
                for name, cls in _SECTIONS.items()}

    def path_of(value: Any, key: str) -> Path:
        check_value(source, key, value, str)
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p

    out = path_of(data.get("out", "edgenas-out"), "out")
    seed = KNOBS["seed"].check(f"{source}: seed", data.get("seed", KNOBS["seed"].default))
    train = TrainSection(**sections["train"])

    if train.preset not in PRESETS:
        raise _bad(source, "train.preset", f"{train.preset!r} is not a preset; choose from {', '.join(PRESETS)}")
    if train.total_steps is not None and train.steps_scale is not None:
        raise _bad(source, "train.total_steps", "give total_steps or steps_scale, not both")
    overrides = {key: getattr(train, key) for key in ("batch_size", "steps_scale", "time_budget", "total_steps")
                 if getattr(train, key) is not None}
    checkpoint = path_of(train.checkpoint, "train.checkpoint") if train.checkpoint is not None else None
    if checkpoint is not None and not checkpoint.is_file():
        raise _bad(source, "train.checkpoint", f"{checkpoint} does not exist")
    init = path_of(train.init, "train.init") if train.init is not None else None
    if init is not None and not init.is_file():
        raise _bad(source, "train.init", f"{init} does not exist: give a supernet checkpoint (edgenas train writes "
                   "supernet.pt; edgenas import ofa brings in Once-for-All's)")
    if init is not None and checkpoint is not None:
        raise _bad(source, "train.init", "give init (fine-tune from it) or checkpoint (use it as trained), not both")
    train_config = path_of(train.config, "train.config") if train.config is not None else None
    if train_config is not None and not train_config.is_file():
        raise _bad(source, "train.config", f"{train_config} does not exist")

    pred = PredictorSection(**sections["predictor"])
    if pred.samples < pred.test + 10:
        raise _bad(source, "predictor.samples", f"{pred.samples} leaves fewer than 10 subnets to fit beside "
                   f"{pred.test} test ones")
    search = SearchSection(**sections["search"])

    if search.algorithm not in ALGORITHMS:
        raise _bad(source, "search.algorithm", f"{search.algorithm!r} is not offered; choose from {', '.join(ALGORITHMS)}")
    formats = _formats(source, sections["export"].get("formats", ["onnx", "tflite", "tflite-int8"]))
    export = ExportSection(**{k: v for k, v in sections["export"].items() if k != "formats"})

    devices = _parse_devices(source, data.get("devices"), base_dir)
    labels = [d.label for d in devices]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise _bad(source, "devices", f"device {dup[0]!r} appears twice with the same precision; merge their budgets")
    return RunConfig(out=out, dataset=train.dataset, preset=train.preset, train_config=train_config,
                     checkpoint=checkpoint, init=init, train_overrides=overrides, seed=seed, predictor_samples=pred.samples,
                     predictor_test=pred.test, bn_batches=pred.bn_batches, algorithm=search.algorithm,
                     population=search.population, generations=search.generations, top_k=search.top_k,
                     formats=formats, max_int8_drop_points=export.max_int8_drop_points, devices=tuple(devices),
                     source=source)


def _formats(source: str, formats: Any) -> tuple[str, ...]:
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise _bad(source, "export.formats", f"expected a list such as [\"onnx\", \"tflite\"], got {formats!r}")

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise _bad(source, "export.formats",
                   f"unknown format {bad[0]!r}{did_you_mean(bad[0], FORMATS)}; choose from {', '.join(FORMATS)}")
    return tuple(formats)


def _parse_devices(source: str, raw_devices: Any, base_dir: Path) -> list[DeviceTarget]:
    """The `[[devices]]` tables of a run config, each checked (one line naming the first bad key)."""
    if not isinstance(raw_devices, list) or not raw_devices or len(raw_devices) > 256:
        raise _bad(source, "devices", "expected at least one [[devices]] table with a name and budgets_ms")
    devices = []
    for i, d in enumerate(raw_devices):
        key = f"devices[{i}]"
        values = read_table(DeviceTarget, d, source=source, section=key,
                            extra=frozenset({"name", "budgets_ms", "budget_quantiles"}))
        if "name" not in values:
            raise _bad(source, f"{key}.name", "missing: the device's name (devices/NAME.toml) or a path to its file")
        name = check_value(source, f"{key}.name", values["name"], str)
        if name.endswith(".toml") and not Path(name).is_absolute():
            values["name"] = str(base_dir / name)
        budgets = values.get("budgets_ms", [])
        quantiles = values.get("budget_quantiles", [])
        for bkey, numbers, lo, hi in (("budgets_ms", budgets, 0, 1e7), ("budget_quantiles", quantiles, 0, 1)):
            if not isinstance(numbers, list) or len(numbers) > 100 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and lo < v <= hi for v in numbers):
                raise _bad(source, f"{key}.{bkey}", f"expected a list of numbers in ({lo}, {hi}], got {numbers!r}")
            values[bkey] = tuple(float(v) for v in numbers)
        if not budgets and not quantiles:
            raise _bad(source, f"{key}.budgets_ms", "missing: give latency budgets in ms (or budget_quantiles)")
        if values.get("calibration") == "transfer" and not devices:
            raise _bad(source, f"{key}.calibration", "transfer needs a device calibrated before it: list that one first")
        devices.append(DeviceTarget(**values))
    return devices


def load_run_config(path: str | Path, *, out: str | Path | None = None) -> RunConfig:
    path = Path(path)
    data = read_toml(path, "run config", hint="see examples/ for configs to start from")
    if out is not None:
        output_dir(out, "--out")
        data["out"] = str(Path(out).resolve())
    return parse_run_config(data, source=str(path), base_dir=path.resolve().parent)


def check_run_inputs(config: RunConfig) -> None:
    """Check everything a run reads and writes before its first stage: the output folder, the dataset, the
    training config or checkpoint, every device file (and its runtime with the precision), the stage book.

    A mistake in the last device is found before training, not after it."""
    source = config.source
    output_dir(config.out, f"{source}: out")
    try:
        check_dataset_spec(config.dataset)
    except UsageError as exc:
        raise _bad(source, "train.dataset", str(exc)) from None
    if config.checkpoint is not None:
        # deferred: torch loads only when this runs, not on import
        from edgenas.train.checkpoint import read_checkpoint

        read_checkpoint(config.checkpoint)
    else:
        tconfig = config.train_config_of(load_config)
        if "total_steps" in config.train_overrides:
            try:
                tconfig.spread_steps(config.train_overrides["total_steps"])
            except UsageError as exc:
                raise _bad(source, "train.total_steps", str(exc)) from None
    for i, target in enumerate(config.devices):
        try:
            device = load_device_config(target.name)
        except UsageError as exc:
            raise _bad(source, f"devices[{i}].name", str(exc)) from None
        if device.runtime == "onnxruntime" and target.precision == "int8":
            raise _bad(source, f"devices[{i}].precision", f"device {device.name} runs ONNX Runtime, which edgenas "
                       "deploys in fp32: set precision = \"fp32\" (int8 is for TFLite devices)")
    book = config.out / "stages.json"
    if book.exists() or book.is_symlink():
        data = read_json(book, "stage book", limit=64 * MIB, remedy="delete it to run every stage again")
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise UsageError(f"stage book {book} is not a table of stages: delete it to run every stage again")
