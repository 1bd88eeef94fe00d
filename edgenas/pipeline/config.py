"""The `edgenas run` config (TOML): dataset, supernet, devices with budgets, export formats, output folder.

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
samples = 150                  # subnets evaluated for the accuracy predictor (test ones included)
test = 30
# bn_batches = 8               # training batches of 64 images each subnet's BatchNorm is recalibrated on

[search]
algorithm = "evolution"        # evolution | nsga2 | random | rl (edgenas search --algorithm)
population = 100               # archs per generation (4 or more)
# generations = 500            # default: the algorithm's (500 for evolution, 100 for nsga2, random and rl)
top_k = 3                      # candidates exported and measured per budget (the defaults: edgenas.search.settings)

[export]
formats = ["onnx", "tflite", "tflite-int8"]
# max_int8_drop_points = 1.0   # an int8 file fails when its accuracy drop (paired, on validation + holdout
                               # images) is above this even at its 95 % interval's low end

[[devices]]
name = "local"                 # devices/NAME.toml, or a path to a device file
precision = "fp32"             # fp32 | int8 (what is deployed and measured)
budgets_ms = [2.0, 4.0]        # latency budgets; or budget_quantiles = [0.3, 0.7] of the space's latency range
calibration = "table"          # table (latency table + whole-subnet correction) | whole-model | transfer
calibration_budget = 40        # whole-subnet measurements (on top of the table; for transfer: 10 is typical)
holdout = 20                   # held-out subnets measured to show calibration quality
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

from edgenas.errors import UsageError
from edgenas.inputs import MIB, check_value, output_dir, read_json, read_toml
from edgenas.search.settings import SEARCH_SETTINGS

PRECISIONS = ("fp32", "int8")
CALIBRATIONS = ("table", "whole-model", "transfer")


@dataclass(frozen=True)
class DeviceTarget:
    """One device of a run, with its budgets and limits."""

    name: str
    precision: str = "fp32"
    budgets_ms: tuple[float, ...] = ()
    budget_quantiles: tuple[float, ...] = ()
    max_sram_kb: float | None = None
    max_flash_kb: float | None = None
    max_macs: float | None = None  # millions of MACs, as `edgenas search --max-macs`
    calibration: str = "table"  # table | whole-model | transfer (from the devices calibrated before it in the run)
    calibration_budget: int = 40
    holdout: int = 20
    calibration_rounds: int = 5  # rounds of uncertain subnets after the first window; 0: all in the table's window

    @property
    def label(self) -> str:
        return f"{Path(self.name).stem}-{self.precision}"


@dataclass(frozen=True)
class RunConfig:
    out: Path
    dataset: str = "digits"
    preset: str = "tiny"
    train_config: Path | None = None
    checkpoint: Path | None = None
    init: Path | None = None  # fine-tune from this supernet (edgenas train --init)
    train_overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    predictor_samples: int = 150
    predictor_test: int = 30
    bn_batches: int = 8  # training batches (of 64) a subnet's BatchNorm is recalibrated on: predictor and exports
    algorithm: str = "evolution"
    population: int = SEARCH_SETTINGS["population"].default
    generations: int | None = None  # the algorithm's default
    top_k: int = SEARCH_SETTINGS["top_k"].default
    formats: tuple[str, ...] = ("onnx", "tflite", "tflite-int8")
    max_int8_drop_points: float = 1.0  # the int8 check's accuracy-drop limit (edgenas.export.verify)
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
            from edgenas.train.finetune import init_space_name

            space = init_space_name(self.init)
        tconfig = load_config(self.train_config, preset=self.preset, dataset=self.dataset, seed=self.seed,
                              batch_size=self.train_overrides.get("batch_size"),
                              time_budget=self.train_overrides.get("time_budget"), space=space,
                              init=str(self.init) if self.init is not None else None)
        if "steps_scale" in self.train_overrides:
            tconfig = tconfig.scale_epochs(self.train_overrides["steps_scale"])
        return tconfig


_BIG_STEPS = 1_000_000_000
_TOP = {"out", "seed", "train", "predictor", "search", "export", "devices"}
_SECTIONS = {
    "train": {"dataset", "preset", "config", "checkpoint", "init", "steps_scale", "batch_size", "time_budget",
              "total_steps"},
    "predictor": {"samples", "test", "bn_batches"},
    "search": {"algorithm", "population", "generations", "top_k"},
    "export": {"formats", "max_int8_drop_points"},
}
_DEVICE_KEYS = {f.name for f in dataclasses.fields(DeviceTarget)}


def _bad(source: str, key: str, message: str) -> UsageError:
    return UsageError(f"{source}: {key}: {message}")


def _typed(source: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise _bad(source, key, f"expected {what}, got {value!r}")
    return value


def parse_run_config(data: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """Validate a run config; every problem is one line naming the file, the key and what is expected."""
    base_dir = base_dir or Path.cwd()
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _bad(source, unknown[0], f"unknown key; expected one of {', '.join(sorted(_TOP))}")
    sections: dict[str, dict[str, Any]] = {}
    for name, keys in _SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, Mapping):
            raise _bad(source, name, "expected a table ([" + name + "])")
        bad = sorted(set(section) - keys)
        if bad:
            raise _bad(source, f"{name}.{bad[0]}", f"unknown key; expected one of {', '.join(sorted(keys))}")
        sections[name] = dict(section)

    def path_of(value: Any, key: str) -> Path:
        check_value(source, key, value, str)
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p

    out = path_of(data.get("out", "edgenas-out"), "out")
    seed = check_value(source, "seed", data.get("seed", 0), int, 0, 2**31 - 1)
    train = sections["train"]
    dataset = _typed(source, "train.dataset", train.get("dataset", "digits"), str, "a dataset spec such as digits")
    preset = _typed(source, "train.preset", train.get("preset", "tiny"), str, "a training preset name")
    from edgenas.train.config import PRESETS

    if preset not in PRESETS:
        raise _bad(source, "train.preset", f"{preset!r} is not a preset; choose from {', '.join(PRESETS)}")
    overrides = {}
    if "batch_size" in train:
        overrides["batch_size"] = check_value(source, "train.batch_size", train["batch_size"], int, 1, 1 << 20)
    if "steps_scale" in train:
        scale = check_value(source, "train.steps_scale", train["steps_scale"], float, 0, 10_000, low_open=True)
        overrides["steps_scale"] = float(scale)
    if "time_budget" in train:
        budget = check_value(source, "train.time_budget", train["time_budget"], float, 0, 10 * 365 * 86400, low_open=True)
        overrides["time_budget"] = float(budget)
    if "total_steps" in train:
        overrides["total_steps"] = check_value(source, "train.total_steps", train["total_steps"], int, 1, _BIG_STEPS)
        if "steps_scale" in train:
            raise _bad(source, "train.total_steps", "give total_steps or steps_scale, not both")
    checkpoint = path_of(train["checkpoint"], "train.checkpoint") if "checkpoint" in train else None
    if checkpoint is not None and not checkpoint.is_file():
        raise _bad(source, "train.checkpoint", f"{checkpoint} does not exist")
    init = path_of(train["init"], "train.init") if "init" in train else None
    if init is not None and not init.is_file():
        raise _bad(source, "train.init", f"{init} does not exist: give a supernet checkpoint (edgenas train writes "
                   "supernet.pt; edgenas import ofa brings in Once-for-All's)")
    if init is not None and checkpoint is not None:
        raise _bad(source, "train.init", "give init (fine-tune from it) or checkpoint (use it as trained), not both")
    train_config = path_of(train["config"], "train.config") if "config" in train else None
    if train_config is not None and not train_config.is_file():
        raise _bad(source, "train.config", f"{train_config} does not exist")

    pred = sections["predictor"]
    samples = check_value(source, "predictor.samples", pred.get("samples", 150), int, 1, 1_000_000)
    test = check_value(source, "predictor.test", pred.get("test", 30), int, 1, 1_000_000)
    bn_batches = check_value(source, "predictor.bn_batches", pred.get("bn_batches", 8), int, 1, 100_000)
    if samples < test + 10:
        raise _bad(source, "predictor.samples", f"{samples} leaves fewer than 10 subnets to fit beside {test} test ones")
    search = sections["search"]
    algorithm = _typed(source, "search.algorithm", search.get("algorithm", "evolution"), str, "an algorithm name")
    from edgenas.search.registry import ALGORITHMS

    if algorithm not in ALGORITHMS:
        raise _bad(source, "search.algorithm", f"{algorithm!r} is not offered; choose from {', '.join(ALGORITHMS)}")
    population, generations, top_k = (_search_setting(source, search, n) for n in ("population", "generations", "top_k"))
    formats = sections["export"].get("formats", ["onnx", "tflite", "tflite-int8"])
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise _bad(source, "export.formats", f"expected a list such as [\"onnx\", \"tflite\"], got {formats!r}")
    from edgenas.export.subnet import FORMATS

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise _bad(source, "export.formats", f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")

    max_drop = check_value(source, "export.max_int8_drop_points", sections["export"].get("max_int8_drop_points", 1.0),
                           float, 0, 100)

    devices = _parse_devices(source, data.get("devices"), base_dir)
    labels = [d.label for d in devices]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise _bad(source, "devices", f"device {dup[0]!r} appears twice with the same precision; merge their budgets")
    return RunConfig(out=out, dataset=dataset, preset=preset, train_config=train_config, checkpoint=checkpoint, init=init,
                     train_overrides=overrides, seed=seed, predictor_samples=samples, predictor_test=test, bn_batches=bn_batches,
                     algorithm=algorithm, population=population, generations=generations, top_k=top_k, formats=tuple(formats),
                     max_int8_drop_points=max_drop, devices=tuple(devices), source=source)


def _search_setting(source: str, search: Mapping[str, Any], name: str) -> Any:
    """A `[search]` count with its one default and range (edgenas.search.settings), as `edgenas search`'s flag."""
    setting = SEARCH_SETTINGS[name]
    value = search.get(name, setting.default)
    return None if value is None else check_value(source, f"search.{name}", value, int, setting.low, setting.high)


def _parse_devices(source: str, raw_devices: Any, base_dir: Path) -> list[DeviceTarget]:
    """The `[[devices]]` tables of a run config, each checked (one line naming the first bad key)."""
    if not isinstance(raw_devices, list) or not raw_devices or len(raw_devices) > 256:
        raise _bad(source, "devices", "expected at least one [[devices]] table with a name and budgets_ms")
    devices = []
    for i, d in enumerate(raw_devices):
        key = f"devices[{i}]"
        if not isinstance(d, Mapping):
            raise _bad(source, key, "expected a table")
        bad = sorted(set(d) - _DEVICE_KEYS)
        if bad:
            raise _bad(source, f"{key}.{bad[0]}", f"unknown key; expected one of {', '.join(sorted(_DEVICE_KEYS))}")
        if "name" not in d:
            raise _bad(source, f"{key}.name", "missing: the device's name (devices/NAME.toml) or a path to its file")
        name = check_value(source, f"{key}.name", d["name"], str)
        if name.endswith(".toml") and not Path(name).is_absolute():
            name = str(base_dir / name)
        precision = d.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise _bad(source, f"{key}.precision", f"{precision!r} is not offered; choose fp32 or int8")
        budgets = d.get("budgets_ms", [])
        quantiles = d.get("budget_quantiles", [])
        for bkey, values, lo, hi in (("budgets_ms", budgets, 0, 1e7), ("budget_quantiles", quantiles, 0, 1)):
            if not isinstance(values, list) or len(values) > 100 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and lo < v <= hi for v in values):
                raise _bad(source, f"{key}.{bkey}", f"expected a list of numbers in ({lo}, {hi}], got {values!r}")
        if not budgets and not quantiles:
            raise _bad(source, f"{key}.budgets_ms", "missing: give latency budgets in ms (or budget_quantiles)")
        limits = {}
        for lkey in ("max_sram_kb", "max_flash_kb", "max_macs"):
            if lkey in d:
                limits[lkey] = check_value(source, f"{key}.{lkey}", d[lkey], float, 0, 1e15, low_open=True)
        calibration = d.get("calibration", "table")
        if calibration not in CALIBRATIONS:
            raise _bad(source, f"{key}.calibration", f"{calibration!r} is not offered; choose {', '.join(CALIBRATIONS)}")
        if calibration == "transfer" and not devices:
            raise _bad(source, f"{key}.calibration", "transfer needs a device calibrated before it: list that one first")
        counts = {}
        for ckey in ("calibration_budget", "holdout"):
            if ckey in d:
                counts[ckey] = check_value(source, f"{key}.{ckey}", d[ckey], int, 3, 100_000)
        if "calibration_rounds" in d:
            counts["calibration_rounds"] = check_value(source, f"{key}.calibration_rounds", d["calibration_rounds"],
                                                       int, 0, 100)
        devices.append(DeviceTarget(name=name, precision=precision, budgets_ms=tuple(float(b) for b in budgets),
                                    budget_quantiles=tuple(float(q) for q in quantiles), calibration=calibration,
                                    **limits, **counts))
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
    from edgenas.data import check_dataset_spec
    from edgenas.devices.config import load_config as load_device_config

    source = config.source
    output_dir(config.out, f"{source}: out")
    try:
        check_dataset_spec(config.dataset)
    except UsageError as exc:
        raise _bad(source, "train.dataset", str(exc)) from None
    if config.checkpoint is not None:
        from edgenas.train.checkpoint import read_checkpoint

        read_checkpoint(config.checkpoint)
    else:
        from edgenas.train.config import load_config

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
