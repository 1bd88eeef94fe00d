"""`edgenas run` stops at the training gate: a random-label folder dataset through the real trainer and pipeline."""

from __future__ import annotations

import json

from edgenas.cli import main
from edgenas.pipeline.run_config import parse_run_config
from tests.train.test_gate import make_folder

SHORT_TOML = """
preset = "tiny"
batch_size = 8
lr_batch_size = 32
bn_batches = 2
final_samples = 0
plateau_every = 1.0
[[phases]]
name = "full"
steps = 12
lr = 0.1
distill = false
[[phases]]
name = "expand"
steps = 4
lr = 0.03
kernels = "all"
depths = "all"
expands = "all"
subnets_per_step = 2
smallest_first = true
"""

RUN_TOML = """
out = "out"
[train]
dataset = "folder:{folder}"
config = "short.toml"
[predictor]
samples = 16
test = 5
[[devices]]
name = "local.toml"
budget_quantiles = [0.9]
calibration_budget = 4
holdout = 3
"""

LOCAL_TOML = """
name = "local"
kind = "local"
runtime = "onnxruntime"
threads = 1
"""


def test_run_stops_at_the_gate_on_random_labels(tmp_path, capsys):
    folder = make_folder(tmp_path / "data", random_labels=True)
    (tmp_path / "short.toml").write_text(SHORT_TOML)
    (tmp_path / "local.toml").write_text(LOCAL_TOML)
    (tmp_path / "run.toml").write_text(RUN_TOML.format(folder=folder))
    assert main(["run", str(tmp_path / "run.toml")]) == 1
    err = capsys.readouterr().err
    assert "training check FAILED" in err and "not far above chance" in err and "--force" in err
    assert (tmp_path / "out" / "supernet" / "supernet.pt").is_file()  # the state is kept ...
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert list(stages) == ["train"]  # ... and nothing after training ran
    # the report holds the training curves of every phase and the verdict, and says nothing shipped
    report = (tmp_path / "out" / "report.html").read_text()
    assert str(tmp_path / "out" / "report.html") in err
    assert "stopped at the training check" in report and "Nothing was searched or shipped" in report
    assert "training check FAILED" in report and "alt=\"training curves\"" in report
    # a re-run reuses the training and stops at the same gate
    assert main(["run", str(tmp_path / "run.toml")]) == 1
    assert "stage train: reused" in capsys.readouterr().err


def test_run_config_takes_a_time_budget():
    devices = [{"name": "a", "budgets_ms": [1.0]}]
    assert parse_run_config({"train": {"time_budget": 90}, "devices": devices}).train_overrides["time_budget"] == 90.0
    import pytest

    from edgenas.errors import UsageError

    with pytest.raises(UsageError, match="train.time_budget"):
        parse_run_config({"train": {"time_budget": 0}, "devices": devices})


def test_run_config_takes_total_steps_spread_over_the_phases(tmp_path):
    from edgenas.pipeline.run_config import check_run_inputs
    from edgenas.train.config import preset_config

    devices = [{"name": "a", "budgets_ms": [1.0]}]
    assert parse_run_config({"train": {"total_steps": 212}, "devices": devices}).train_overrides["total_steps"] == 212
    tiny = preset_config("tiny")
    spread = tiny.spread_steps(212)
    steps = [p.steps for p in spread.phases]
    assert sum(steps) == 212 and all(not p.adaptive for p in spread.phases)
    # in proportion to the phases' epochs (3, 1, 0.5, 1.5, 0.5, 2 in tiny), within a step
    epochs = [p.epochs for p in tiny.phases]
    assert all(abs(n - 212 * e / sum(epochs)) <= 1 for n, e in zip(steps, epochs))
    assert [p.steps for p in tiny.spread_steps(6).phases] == [1] * 6
    import pytest

    from edgenas.errors import UsageError

    with pytest.raises(UsageError, match="total steps 5 must be at least the number of phases"):
        tiny.spread_steps(5)
    config = parse_run_config({"out": str(tmp_path / "o"), "train": {"total_steps": 5},
                               "devices": [{"name": "local", "budgets_ms": [1.0]}]})
    with pytest.raises(UsageError, match="train.total_steps: total steps 5"):
        check_run_inputs(config)

