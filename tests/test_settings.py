"""edgenas.settings: one default, one range and one one-line error per knob, whichever door it comes through."""

from __future__ import annotations

import dataclasses

import pytest

from edgenas.cli import build_parser, main
from edgenas.errors import UsageError
from edgenas.pipeline.run_config import DeviceTarget, parse_run_config
from edgenas.settings import KNOBS, Setting, read_table, setting, settings_of
from edgenas.train.config import TrainConfig, load_config

DEVICE = {"name": "local", "budgets_ms": [1.0]}

# (the knob, the command line that offers it, its argparse dest there, where a run config keeps it)
DOORS = [
    ("calibration_budget", ["calibrate", "--device", "d", "--space", "tiny"], "budget", "devices[0].calibration_budget"),
    ("calibration_rounds", ["calibrate", "--device", "d", "--space", "tiny"], "rounds", "devices[0].calibration_rounds"),
    ("holdout", ["latency", "eval", "--device", "d", "--space", "tiny"], "holdout", "devices[0].holdout"),
    ("samples", ["predictor", "fit", "--supernet", "x"], "samples", "predictor.samples"),
    ("test", ["predictor", "fit", "--supernet", "x"], "test", "predictor.test"),
    ("bn_batches", ["predictor", "fit", "--supernet", "x"], "bn_batches", "predictor.bn_batches"),
    ("bn_batches", ["search", "--supernet", "x", "--device", "d"], "bn_batches", "predictor.bn_batches"),
    ("top_k", ["search", "--supernet", "x", "--device", "d"], "top_k", "search.top_k"),
    ("population", ["search", "--supernet", "x", "--device", "d"], "population", "search.population"),
    ("generations", ["search", "--supernet", "x", "--device", "d"], "generations", "search.generations"),
    ("max_int8_drop_points", ["export", "--supernet", "x", "--arch", "a", "--out", "o"], "max_int8_drop",
     "export.max_int8_drop_points"),
]
FLAGS = {"budget": "--budget", "rounds": "--rounds", "max_int8_drop": "--max-int8-drop"}


def _config_value(run_config, key: str):
    section, _, name = key.partition(".")
    if section.startswith("devices"):
        return getattr(run_config.devices[0], name)
    field = {"predictor.samples": "predictor_samples", "predictor.test": "predictor_test"}.get(key, name)
    return getattr(run_config, field)


def _config_with(key: str, value) -> dict:
    data: dict = {"devices": [dict(DEVICE)]}
    section, _, name = key.partition(".")
    if section.startswith("devices"):
        data["devices"][0][name] = value
    else:
        data[section] = {name: value}
    return data


@pytest.mark.parametrize("knob,argv,dest,key", DOORS, ids=[f"{d[0]}-{d[1][0]}" for d in DOORS])
def test_a_knob_has_one_default_through_the_flag_and_the_run_config(knob, argv, dest, key):
    args = build_parser().parse_args(argv)
    from_flag = getattr(args, dest)
    from_config = _config_value(parse_run_config({"devices": [dict(DEVICE)]}), key)
    assert from_flag == from_config == KNOBS[knob].default


@pytest.mark.parametrize("knob,argv,dest,key", DOORS, ids=[f"{d[0]}-{d[1][0]}" for d in DOORS])
def test_a_bad_value_is_the_same_line_through_the_flag_and_the_run_config(knob, argv, dest, key, capsys, tmp_path):
    s = KNOBS[knob]
    bad = s.low - 1 if s.kind is int else s.high + 1.5
    flag = FLAGS.get(dest, "--" + dest.replace("_", "-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main([*argv, flag, str(bad)]) == 2
    from_flag = capsys.readouterr().err.strip()
    with pytest.raises(UsageError) as exc:
        parse_run_config(_config_with(key, bad), source="run.toml")
    from_config = str(exc.value)
    assert from_flag.splitlines() == [from_flag]  # one line
    expected = f": expected {s.expected()}"
    assert from_flag == f"edgenas: error: {flag} = {bad!r}{expected}"
    assert from_config == f"run.toml: {key} = {bad!r}{expected}"


def test_every_range_check_accepts_its_bounds_and_refuses_past_them():
    for name, s in KNOBS.items():
        if s.kind not in (int, float) or s.low is None:
            continue
        where = f"--{name}"
        if not s.low_open:
            assert s.check(where, s.kind(s.low)) == s.low
        with pytest.raises(UsageError, match=f"^{where} = "):
            s.check(where, s.low - 1 if s.kind is int else s.low - 0.5 if not s.low_open else s.low)
        if s.high is not None:
            assert s.check(where, s.kind(s.high)) == s.high
            with pytest.raises(UsageError):
                s.check(where, s.high + 1)
        with pytest.raises(UsageError, match="expected"):
            s.check(where, True)  # a boolean is not a count
        with pytest.raises(UsageError):
            s.check(where, "5")  # nor is a string
    assert KNOBS["max_int8_drop_points"].check("x", 2) == 2.0 and isinstance(KNOBS["max_int8_drop_points"].check("x", 2), float)


def test_read_table_refuses_unknown_keys_and_names_the_file_and_key():
    @dataclasses.dataclass(frozen=True)
    class Section:
        count: int = setting(3, low=1, high=9)
        mode: str = setting("a", choices=("a", "b"))

    assert read_table(Section, {"count": 9, "mode": "b"}, source="f.toml", section="s") == {"count": 9, "mode": "b"}
    with pytest.raises(UsageError, match=r"^f.toml: s.colour: unknown key; expected one of count, mode$"):
        read_table(Section, {"colour": 1}, source="f.toml", section="s")
    with pytest.raises(UsageError, match=r"^f.toml: s.mode = 'c': expected \"a\" or \"b\"$"):
        read_table(Section, {"mode": "c"}, source="f.toml", section="s")
    with pytest.raises(UsageError, match=r"^f.toml: s.count = 10: expected an integer from 1 to 9$"):
        read_table(Section, {"count": 10}, source="f.toml", section="s")
    with pytest.raises(UsageError, match=r"^f.toml: s: expected a table"):
        read_table(Section, [1], source="f.toml", section="s")
    assert set(settings_of(Section)) == {"count", "mode"}


def test_the_device_table_and_the_training_config_read_through_the_same_settings():
    device_settings = settings_of(DeviceTarget)
    for name in ("calibration_budget", "holdout", "calibration_rounds", "max_sram_kb"):
        assert device_settings[name] is KNOBS[name]
    assert settings_of(TrainConfig)["batch_size"].expected() == "an integer from 1 to 1 048 576"
    with pytest.raises(UsageError, match=r"^command line: batch_size = 0: expected an integer from 1 to 1 048 576$"):
        load_config(preset="tiny", batch_size=0)


def test_help_shows_each_knobs_one_default():
    text = build_parser()._subparsers._group_actions[0].choices["calibrate"].format_help()
    assert f"(default: {KNOBS['calibration_budget'].default})" in " ".join(text.split())
    assert Setting(float, 0.5, help="x").help_text() == "x (default: 0.5)"
    assert Setting(int, None, help="y").help_text() == "y"
