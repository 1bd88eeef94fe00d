"""One settings layer: every user-facing knob declared once, with its type, range, default and help; one reader.

A knob reaches edgenas through three doors: a command-line flag (`edgenas calibrate --budget 100`), a TOML table
(a run config's `[[devices]] calibration_budget = 100`, a training config's `batch_size = 64`) and Python
(`RunConfig(...)`). Each door reads the knob's `Setting` from here, so a knob has one default and one range
whichever door it comes through, and a bad value is the same one line at every door, naming where it came from:

    edgenas: error: --budget = 0: expected an integer from 3 to 100 000
    edgenas: error: run.toml: devices[0].calibration_budget = 0: expected an integer from 3 to 100 000

Settings hold on dataclass fields (`setting(...)` puts a `Setting` in the field's metadata; `settings_of(cls)` reads
them back), and `read_table(cls, table, ...)` reads a TOML table into checked values of those fields, refusing
unknown keys. `KNOBS` holds the knobs more than one door offers, by name; a flag whose argparse dest is a knob's
name is checked against that knob (`edgenas.cli.check_arguments`), a field reuses it with `knob_field(name)`.

Why the shared defaults are what they are (where `edgenas run` and the single commands used to differ):
- `samples = 1000`, `test = 200` (accuracy-predictor subnets; a run config had 150 and 30): the predictor's
  ranking of the top of the space is what the search follows, and it keeps improving past a few hundred samples;
  the demo and examples set their own smaller counts.
- `calibration_budget = 100` (whole-subnet latency measurements; a run had 40): on the mobilenetv3 space at
  160–224 px, 100 measurements put the calibrated predictor within ±10 % for 96 % of 50 held-out subnets.
- `holdout = 50` (held-out subnets measured to judge a latency predictor; `latency eval` had 100, a run 20):
  the count every latency figure in the issues and the README is judged on.
- search: `top_k = 3`, `population = 100` (at least 4), `generations` the algorithm's own (see `search.settings`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.errors import UsageError


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(float(value))


def require(ok: bool, source: str, field: str, value: Any, expected: str, remedy: str = "") -> None:
    """Raise `source: field = value: expected ...` unless `ok`."""
    if not ok:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        where = f"{source}: {field}" if source else field
        raise UsageError(f"{where} = {shown}: expected {expected}" + (f"; {remedy}" if remedy else ""))


BIG_COUNT = 1_000_000_000
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Setting:
    """One knob: its type (int, float, bool or str), its default, its range or choices, and a line of help.

    `low_open` excludes `low` itself (a positive number); `choices` restricts a string; `optional` lets the value
    be None (unset: decided elsewhere, as `help` says)."""

    kind: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether `value` is of this setting's type, in its range or among its choices (None: only if optional)."""
        if value is None:
            return self.optional or self.default is None
        if self.choices:
            return value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and value != "" and "\x00" not in value and len(value) <= 4096
        if not (is_int(value) if self.kind is int else is_number(value)):
            return False
        return (self.low is None or (value > self.low if self.low_open else value >= self.low)) and \
            (self.high is None or value <= self.high)

    def expected(self) -> str:
        """What a right value is, in words: `an integer from 1 to 100 000`, `"fp32" or "int8"`, `true or false`."""
        if self.choices:
            return " or ".join(f'"{c}"' for c in self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a non-empty string"
        what = "an integer" if self.kind is int else "a number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            return (f"{what} {'above' if self.low_open else 'from'} {shown_bound(low)} "
                    f"{'and at most' if self.low_open else 'to'} {shown_bound(high)}")
        if low is not None:
            return f"{what} {'>' if self.low_open else '>='} {shown_bound(low)}"
        if high is not None:
            return f"{what} <= {shown_bound(high)}"
        return what

    def check(self, where: str, value: Any, *, remedy: str = "") -> Any:
        """The value, checked (ints accepted where a float is asked for, returned as float); else one line
        `where = value: expected ...`, the same whether `where` is a flag or a file's key."""
        require(self.accepts(value), *_split(where), value, self.expected(), remedy)
        return float(value) if self.kind is float and value is not None else value

    def help_text(self) -> str:
        """`help` with the default appended (argparse's `%` escaped), for `--help`."""
        shown = "unset" if self.default is None else ("on" if self.default is True else "off") \
            if isinstance(self.default, bool) else f"{self.default:g}" if isinstance(self.default, float) \
            else str(self.default)
        text = self.help if self.default is None else f"{self.help} (default: {shown})"
        return text.replace("%", "%%")


def shown_bound(bound: float) -> str:
    """A range's bound as people read it: 100 000 (not 1e+05), 0.5, 1e+15."""
    if float(bound).is_integer() and abs(bound) < 1e12:
        return f"{int(bound):,}".replace(",", " ")
    return f"{bound:g}"


def _split(where: str) -> tuple[str, str]:
    """`check_value`'s (source, field) from one location: "FILE: key" or "--flag"."""
    source, sep, key = where.rpartition(": ")
    return (source, key) if sep else ("", where)


def setting(default: Any = None, *, kind: type | None = None, low: float | None = None, high: float | None = None,
            low_open: bool = False, choices: tuple[str, ...] = (), help: str = "", optional: bool = False) -> Any:
    """A dataclass field carrying its `Setting` (type from `kind`, else from the default)."""
    kind = kind or (type(default) if default is not None else str)
    s = Setting(kind, default, low, high, low_open, tuple(choices), help, optional)
    return dataclasses.field(default=default, metadata={"setting": s})


def knob_field(name: str) -> Any:
    """A dataclass field whose setting is the shared knob `name` (its one default and range)."""
    s = KNOBS[name]
    return dataclasses.field(default=s.default, metadata={"setting": s})


def settings_of(cls: type) -> dict[str, Setting]:
    """The settings declared on a dataclass's fields, by field name."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}


def read_table(cls: type, table: Any, *, source: str, section: str = "", extra: frozenset[str] = frozenset(),
               remedy: str = "") -> dict[str, Any]:
    """A TOML table read into checked values of `cls`'s settings (only the keys given; defaults are the fields').

    Every problem is one line naming the file and the key: a table that is not one, an unknown key (keys in
    `extra` are allowed and returned unchecked, for their reader to check), a value of the wrong type or range."""
    where = f"{source}: {section}" if section else source
    if not isinstance(table, Mapping):
        raise UsageError(f"{where}: expected a table" + (f" ([{section}])" if section else ""))
    known = settings_of(cls)
    unknown = sorted(set(table) - set(known) - extra)
    if unknown:
        choices = ", ".join(sorted(set(known) | extra))
        raise UsageError(f"{source}: {_key(section, unknown[0])}: unknown key; expected one of {choices}")
    return {key: known[key].check(f"{source}: {_key(section, key)}", value, remedy=remedy) if key in known else value
            for key, value in table.items()}


def _key(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


FLAG_SETTINGS = "_flag_settings"  # the parsed arguments' record of which flag is which knob (`add_flag`)


def add_flag(parser: Any, name: str, *flags: str, dest: str | None = None, help: str | None = None,
             **kwargs: Any) -> Any:
    """`parser.add_argument` for the shared knob `name`: its type, its one default and its help (with the default);
    the parsed value is checked against the knob's range before the command runs (`check_flags`), under the flag's
    own name (`--budget` for the knob `calibration_budget`)."""
    s = KNOBS[name]
    flags = flags or (flag_name(name),)
    dest = dest or flags[0].lstrip("-").replace("-", "_")
    if s.choices:
        kwargs.setdefault("choices", s.choices)
    elif s.kind in (int, float):
        kwargs.setdefault("type", s.kind)
    kwargs.setdefault("default", s.default)
    text = Setting(s.kind, kwargs["default"], help=help or s.help).help_text()
    known = dict(parser.get_default(FLAG_SETTINGS) or {})
    known[dest] = (flags[0], s)
    parser.set_defaults(**{FLAG_SETTINGS: known})
    return parser.add_argument(*flags, dest=dest, help=text, **kwargs)


def check_flags(values: Mapping[str, Any]) -> None:
    """Check each parsed flag declared with `add_flag` (and any other whose dest is a knob's name) against its
    knob's range; the one line names the flag, as a file's error names its key."""
    declared = values.get(FLAG_SETTINGS) or {}
    for dest, value in sorted(values.items()):
        if value is None or isinstance(value, (bool, dict)):
            continue
        if dest in declared:
            flag, s = declared[dest]
            s.check(flag, value)
        elif dest in KNOBS:
            KNOBS[dest].check(flag_name(dest), value)


# ---- the knobs more than one door offers ---------------------------------------------------------------------

KNOBS: dict[str, Setting] = {
    "seed": Setting(int, 0, 0, MAX_SEED, help="seed"),
    "batch_size": Setting(int, None, 1, 1 << 20, help="batch size", optional=True),
    "bn_batches": Setting(int, 8, 1, 100_000, help="training batches (of 64 images) each subnet's BatchNorm is "
                          "recalibrated on"),
    "samples": Setting(int, 1000, 1, 1_000_000, help="subnets evaluated for the accuracy predictor (test ones included)"),
    "test": Setting(int, 200, 1, 1_000_000, help="of those, subnets kept out of fitting to test the predictor"),
    "calibration_budget": Setting(int, 100, 3, 100_000, help="whole-subnet latency measurements on top of the "
                                  "table (for a transfer, 10 is typical)"),
    "holdout": Setting(int, 50, 3, 100_000, help="held-out subnets measured to judge the latency predictor"),
    "calibration_rounds": Setting(int, 5, 0, 100, help="windows of the subnets the fit is least sure of "
                                  "(0: every subnet in the table's window)"),
    "max_int8_drop_points": Setting(float, 1.0, 0, 100, help="an int8 file fails when its top-1 drop (paired, on "
                                    "validation and holdout images) is above this many points even at its 95 % "
                                    "interval's low end"),
    "calibration_images": Setting(int, 200, 1, 1_000_000, help="training images int8 files are calibrated on"),
    "population": Setting(int, 100, 4, 100_000, help="archs per generation"),
    "generations": Setting(int, None, 1, 1_000_000, help="generations (default: the algorithm's: 500 for evolution, "
                           "100 for nsga2, random and rl)", optional=True),
    "top_k": Setting(int, 3, 1, 1000, help="candidates exported and measured on the device per budget"),
    "total_steps": Setting(int, None, 1, BIG_COUNT, help="exactly this many training steps in all, spread over the "
                           "phases", optional=True),
    "time_budget": Setting(float, None, 0, 10 * 365 * 86400, low_open=True, help="wall-clock seconds of training, "
                           "spread over the phases", optional=True),
    "steps_scale": Setting(float, None, 0, 10_000, low_open=True, help="multiply every phase's length by this",
                           optional=True),
    "threads": Setting(int, None, 1, 1024, help="CPU threads per process (default: the idle cores)", optional=True),
    "workers": Setting(int, 1, 1, 256, help="worker processes"),
    "data_workers": Setting(int, None, 0, 64, help="DataLoader worker processes that decode a streamed folder's "
                            "images (default: half the cores, at most 8)", optional=True),
    "steps": Setting(int, None, 1, BIG_COUNT, help="exactly this many steps in every phase", optional=True),
    "checkpoint_every": Setting(int, None, 1, BIG_COUNT, help="steps between resumable checkpoints", optional=True),
    "finetune_epochs": Setting(int, 0, 0, 10_000, help="distillation fine-tuning epochs"),
    "sample": Setting(int, None, 1, 1_000_000, help="random subnets", optional=True),
    "transfer_samples": Setting(int, 10, 1, 100_000, help="measurements a transfer fits on"),
    "max_latency_ms": Setting(float, None, 0, 1e7, low_open=True, help="latency limit on the device (ms)",
                              optional=True),
    "max_sram_kb": Setting(float, None, 0, 1e15, low_open=True, help="SRAM limit (KB)", optional=True),
    "max_flash_kb": Setting(float, None, 0, 1e15, low_open=True, help="flash limit (KB)", optional=True),
    "max_macs": Setting(float, None, 0, 1e15, low_open=True, help="compute limit in millions of MACs", optional=True),
    "epochs_scale": Setting(float, None, 0, 10_000, low_open=True, help="multiply every phase's epochs by this",
                            optional=True),
    "target_sram_kb": Setting(float, None, 0, 1e15, low_open=True, help="SRAM target (KB)", optional=True),
    "target_flash_kb": Setting(float, None, 0, 1e15, low_open=True, help="flash target (KB)", optional=True),
}
