"""`edgenas run` config variants a user writes, end to end on a small untrained supernet (this machine's ONNX
Runtime as the device, real export, interleaved measurement, the SQLite store): explicit `budgets_ms`,
`max_sram_kb` and `max_flash_kb` that bind, `whole-model` calibration within its budget, and a changed limit
that re-runs what depends on it; int8 targets at the config level only (int8 export and verification are tested
in the export tests; an int8 run end to end is not here: converting every calibration model to int8 costs minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgenas.cli import main
from edgenas.cost import stats_table
from edgenas.errors import UsageError
from edgenas.space import Arch, SearchSpace
from edgenas.store import Store
from tests.cli.test_accuracy import make_checkpoint

DEVICE = "runconfig-local"  # this machine, ONNX Runtime; its file is local.toml (a name other than the file's)
LABEL = f"{DEVICE}-fp32"
LOCAL = (f'name = "{DEVICE}"\nkind = "local"\nruntime = "onnxruntime"\nthreads = 1\n'
         "[measure]\nwarmup = 2\nruns = 10\nwindow_s = 0.5\nretime = 0\nmin_fast_runs = 0\n")  # the timing is not under test here
BUDGET_MS = 1000.0  # every subnet of the tiny space meets it on any machine: the memory limits decide
CALIBRATION_BUDGET = 4
HOLDOUT = 3
TOP_K = 1

RUN = f"""
out = "out"
seed = 0
[train]
checkpoint = "supernet.pt"
[predictor]
samples = 11
test = 1
[search]
population = 16
generations = 8
top_k = {TOP_K}
[export]
formats = ["onnx"]
[[devices]]
name = "local.toml"
precision = "fp32"
budgets_ms = [{BUDGET_MS}]
max_sram_kb = {{sram}}
max_flash_kb = {{flash}}
calibration = "whole-model"
calibration_budget = {CALIBRATION_BUDGET}
holdout = {HOLDOUT}
"""


def _limits(quantile: float) -> tuple[float, float]:
    """fp32 SRAM (peak of live activations) and flash (weights) limits in KB that `quantile` of random subnets meet."""
    space = SearchSpace.preset("tiny")
    stats = stats_table(space).compute(space.sample_many(np.random.default_rng(1), 400))
    return (float(np.quantile(stats["peak_activation_fp32"], quantile)) / 1024,
            float(np.quantile(stats["flash_fp32"], quantile)) / 1024)


def _over(archs: list[dict], sram_kb: float, flash_kb: float) -> list[dict]:
    """The archs whose fp32 memory (computed here from the layout) exceeds the limits."""
    space = SearchSpace.preset("tiny")
    stats = stats_table(space).compute([Arch.from_dict(a) for a in archs])
    over = (stats["peak_activation_fp32"] > int(sram_kb * 1024)) | (stats["flash_fp32"] > int(flash_kb * 1024))
    return [a for a, o in zip(archs, over) if o]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("runconfig")
    make_checkpoint(root)
    (root / "local.toml").write_text(LOCAL)
    sram, flash = _limits(0.2)
    (root / "run.toml").write_text(RUN.format(sram=f"{sram:.3f}", flash=f"{flash:.3f}"))
    assert main(["run", str(root / "run.toml"), "--json", "--force"]) == 0  # an untrained supernet: past the gate
    stages = json.loads((root / "out" / "stages.json").read_text())
    return root, stages, float(f"{sram:.3f}"), float(f"{flash:.3f}")


def test_budgets_ms_and_memory_limits_hold_for_every_candidate_and_the_front(ran):
    root, stages, sram, flash = ran
    assert [k for k in stages if k.startswith("deploy:")] == [f"deploy:{LABEL}:{BUDGET_MS:g}ms"]  # as given
    deployed = stages[f"deploy:{LABEL}:{BUDGET_MS:g}ms"]["outputs"]
    result = json.loads(Path(deployed["result"]).read_text())
    assert result["constraints"]["max_latency_ms"] == BUDGET_MS
    assert result["constraints"]["max_sram_bytes"] == int(sram * 1024)
    assert result["constraints"]["max_flash_bytes"] == int(flash * 1024)
    # the limits bind: most of the space is over them ...
    space = SearchSpace.preset("tiny")
    sampled = [a.to_dict() for a in space.sample_many(np.random.default_rng(2), 200)]
    assert len(_over(sampled, sram, flash)) > len(sampled) / 2
    # ... and nothing the run searched, measured or shipped is
    front = json.loads(Path(stages[f"pareto:{LABEL}"]["outputs"]["result"]).read_text())["front"]
    archs = [c["arch"] for c in result["top"]] + [c["arch"] for c in deployed["candidates"]] + [c["arch"] for c in front]
    assert len(front) >= 2 and _over(archs, sram, flash) == []
    assert deployed["arch"] is not None and deployed["arch"] in [c["arch"] for c in deployed["candidates"]]
    assert 0 < deployed["measured_latency_ms"] <= BUDGET_MS
    card = json.loads(Path(deployed["card"]).read_text())
    assert card["arch"] == deployed["arch"] and [f["name"] for f in card["files"]] == ["model.onnx"]


def test_whole_model_calibration_measures_within_its_budget_and_builds_no_table(ran):
    root, stages, _, _ = ran
    calibrated = stages[f"calibrate:{LABEL}"]["outputs"]
    predictor = json.loads(Path(calibrated["predictor"]).read_text())
    assert predictor["type"] == "whole_model"
    assert not (root / "out" / "latency_tables" / DEVICE / "onnxruntime-fp32.json").exists()  # no piece table
    assert 2 <= calibrated["summary"]["calibration measurements"] <= CALIBRATION_BUDGET
    assert len(calibrated["holdout_measured"]) == HOLDOUT
    with Store(root / "out" / "store.sqlite") as store:  # calibration, held-out subnets, then the deploy candidates
        measured = store.measurements(device=DEVICE, runtime="onnxruntime", precision="fp32", model_kind="arch")
    assert len({m.model_sha256 for m in measured}) <= CALIBRATION_BUDGET + HOLDOUT + TOP_K


def test_a_changed_memory_limit_reruns_the_searches_and_reuses_the_rest(ran, capsys):
    root, _, _, _ = ran
    sram, flash = _limits(0.4)
    (root / "run2.toml").write_text(RUN.format(sram=f"{sram:.3f}", flash=f"{flash:.3f}"))
    capsys.readouterr()
    assert main(["run", str(root / "run2.toml"), "--json", "--force"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert sorted(result["ran"]) == sorted([f"pareto:{LABEL}", f"deploy:{LABEL}:{BUDGET_MS:g}ms"])
    assert sorted(result["reused"]) == sorted(["predictor", f"calibrate:{LABEL}"])
    stages = json.loads((root / "out" / "stages.json").read_text())
    front = json.loads(Path(stages[f"pareto:{LABEL}"]["outputs"]["result"]).read_text())
    assert front["constraints"]["max_sram_bytes"] == int(float(f"{sram:.3f}") * 1024)


def test_int8_targets_a_tflite_device_and_is_refused_on_onnx_runtime(tmp_path, capsys):
    from edgenas.export.subnet import deployed_format
    from edgenas.pipeline.run_config import check_run_inputs, load_run_config
    from edgenas.pipeline.runner import _constraints

    (tmp_path / "local.toml").write_text(LOCAL)
    (tmp_path / "tflite.toml").write_text(LOCAL.replace(DEVICE, "tflite").replace(
        'runtime = "onnxruntime"', 'runtime = "tflite"'))
    body = RUN.format(sram="100", flash="200").replace("[train]\ncheckpoint = \"supernet.pt\"\n", "")
    (tmp_path / "int8.toml").write_text(body.replace('name = "local.toml"\nprecision = "fp32"',
                                                     'name = "tflite.toml"\nprecision = "int8"'))
    config = load_run_config(tmp_path / "int8.toml")
    check_run_inputs(config)  # accepted: TFLite deploys int8
    (target,) = config.devices
    assert target.label == "tflite-int8" and deployed_format("tflite", target.precision) == "tflite-int8"
    limits = _constraints(target, BUDGET_MS)  # memory limits mean the int8 arena and .tflite file
    assert limits.precision == "int8" and limits.max_sram_bytes == 100 * 1024 and limits.max_flash_bytes == 200 * 1024
    (tmp_path / "onnx-int8.toml").write_text(body.replace('precision = "fp32"', 'precision = "int8"'))
    assert main(["run", str(tmp_path / "onnx-int8.toml")]) == 2
    err = capsys.readouterr().err
    assert "devices[0].precision" in err and "fp32" in err and err.count("\n") == 1


def test_a_search_setting_has_one_default_and_range_whichever_door(tmp_path, capsys):
    """`edgenas search`'s flags, a run config's [search] table, `BudgetJob` and `search_for_budget` take their
    defaults and ranges from edgenas.search.search_settings: top_k 3, population 100 (4 at least), the algorithm's
    generations."""
    import inspect

    from edgenas.cli import build_parser
    from edgenas.deploy.budget import BudgetJob
    from edgenas.pipeline.run_config import parse_run_config
    from edgenas.search.budget_candidates import search_for_budget
    from edgenas.search.search_settings import SEARCH_SETTINGS

    flags = build_parser().parse_args(["search", "--supernet", "x.pt", "--device", "local", "--max-latency-ms", "1"])
    config = parse_run_config({"devices": [{"name": "local", "budgets_ms": [2.0]}]})
    job = BudgetJob(Path("x.pt"), "local")
    defaults = inspect.signature(search_for_budget).parameters
    for name, setting in SEARCH_SETTINGS.items():
        assert getattr(flags, name) == getattr(config, name) == getattr(job, name) == defaults[name].default == \
            setting.default, name
    assert (SEARCH_SETTINGS["top_k"].default, SEARCH_SETTINGS["population"].default) == (3, 100)
    assert SEARCH_SETTINGS["generations"].default is None  # the algorithm's: 500 for evolution
    for low in (3, 0):
        capsys.readouterr()
        assert main(["search", "--supernet", "x.pt", "--device", "local", "--max-latency-ms", "1",
                     "--population", str(low)]) == 2
        err = capsys.readouterr().err
        assert f"--population = {low}: expected an integer from 4 to" in err and len(err.strip().splitlines()) == 1
        with pytest.raises(UsageError, match="search.population"):
            parse_run_config({"search": {"population": low}, "devices": [{"name": "local", "budgets_ms": [2.0]}]})
