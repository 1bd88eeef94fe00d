"""Tests for `edgenas run`: a small config end to end, interrupted mid-calibration and resumed, then reused."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from edgenas.artifacts import sha256_file
from edgenas.errors import UsageError
from edgenas.pipeline.run_config import load_run_config, parse_run_config

SMALL = """
out = "out"
seed = 0
[train]
dataset = "digits"
preset = "tiny"
steps_scale = 0.01
[predictor]
samples = 16
test = 5
bn_batches = 1                 # each subnet's BatchNorm from one batch, not 8: the stage 4 s, not 14 s
[search]
population = 20
generations = 15
top_k = 2
[export]
formats = ["onnx"]
[[devices]]
name = "local.toml"
precision = "fp32"
budget_quantiles = [0.9]
calibration_budget = 4
holdout = 3
"""

LOCAL = """
name = "local"
kind = "local"
runtime = "onnxruntime"
threads = 1
[measure]
warmup = 2
runs = 10
window_s = 0.5
retime = 0                     # an unsteady window (the other test worker) is not timed again: the timing is not under test here
min_fast_runs = 0              # nor does a window wait for fast moments (a loaded machine has few): it lasts window_s
"""


def _edgenas(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgenas.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stored(store: Path) -> list[tuple]:
    if not store.is_file():
        return []
    with sqlite3.connect(store) as db:
        try:
            return db.execute("SELECT id, model_sha256, device, runtime, precision, created FROM measurements "
                              "WHERE ok = 1").fetchall()
        except sqlite3.OperationalError:  # the store is being made: its tables are not there yet
            return []


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "run.toml").write_text(SMALL)
    (root / "local.toml").write_text(LOCAL)
    return root


@pytest.fixture(scope="module")
def interrupted_then_resumed(project):
    store = project / "out" / "store.sqlite"
    proc = _edgenas("run", "run.toml", "--force", cwd=project)
    deadline = time.time() + 900
    # Wait until calibration has committed some measurements, then press Ctrl-C.
    while time.time() < deadline and proc.poll() is None:
        if len(_stored(store)) >= 5:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    before = _stored(store)
    resumed = _edgenas("run", "run.toml", "--json", "--force", cwd=project)
    out2, _ = resumed.communicate(timeout=1800)
    return proc.returncode, out, before, resumed.returncode, out2


def test_ctrl_c_mid_calibration_stops_cleanly(interrupted_then_resumed):
    code, out, before, _, _ = interrupted_then_resumed
    assert code == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert len(before) >= 5


def test_rerun_resumes_and_measures_nothing_twice(project, interrupted_then_resumed):
    _, _, before, code, out = interrupted_then_resumed
    assert code == 0, out
    result = json.loads(out[out.index("{"):])
    assert "calibrate:local-fp32" in result["ran"] and "train" in result["reused"]
    after = _stored(project / "out" / "store.sqlite")
    assert set(before) <= set(after)  # what was measured before Ctrl-C is kept as it was, not re-measured
    keys = [row[1:5] for row in after]
    assert len(keys) == len(set(keys))  # every model measured once on this device
    assert (project / "out" / "report.html").is_file()
    budget = result["budgets"][0]
    assert budget["arch"] is not None
    # The winner met the budget when its candidate file was timed in the deploy stage ...
    stages = json.loads((project / "out" / "stages.json").read_text())
    (search,) = [v["outputs"] for k, v in stages.items() if k.startswith("deploy:local-fp32:")]
    (chosen,) = [c for c in search["candidates"] if c["arch"] == budget["arch"]]
    assert chosen["latency_ms"] <= budget["budget_ms"]
    # ... and it is the one the rule picks from the recorded figures: the best-predicted that meets the budget
    # unless another is more accurate on the same holdout images by more than noise (paired) ...
    from edgenas.deploy.stage import MeasuredCandidate, pick_order, pick_winner, unpack_correct
    from edgenas.space import Arch

    recorded = [MeasuredCandidate(Arch.from_dict(c["arch"]), {"accuracy": c["predicted_accuracy"]},
                                  model=c["model"] and Path(c["model"]), accuracy=c["accuracy"],
                                  correct=unpack_correct(c["holdout_correct"], c["holdout_images"]),
                                  meets_budget=c["meets_budget"], problems=c["problems"], round=c["round"])
                for c in search["candidates"]]
    assert all(c.correct is not None and sum(c.correct) / len(c.correct) == c.accuracy for c in recorded)
    assert pick_winner(pick_order(recorded)).arch.to_dict() == budget["arch"]
    # ... and the shipped file is the very file that was measured (same bytes), its figure the verdict.
    assert budget["measured_latency_ms"] == chosen["latency_ms"] > 0
    assert budget["meets_budget"] is (budget["measured_latency_ms"] <= budget["budget_ms"])
    card = json.loads((Path(budget["export_dir"]) / "card.json").read_text())
    assert card["arch"] == budget["arch"] and [f["name"] for f in card["files"]] == ["model.onnx"]
    shipped = Path(budget["export_dir"]) / "model.onnx"
    assert sha256_file(shipped) == card["files"][0]["sha256"] == chosen["sha256"] == sha256_file(chosen["model"])
    (measured,) = card["latency"]["measured"]
    assert measured["latency_ms"] == budget["measured_latency_ms"] and measured["timing"]["method"] == "interleaved"
    assert budget["problems"] == [] and "EXPORT CHECKS FAILED" not in out


def test_second_run_reuses_every_stage(project, interrupted_then_resumed):
    proc = _edgenas("run", "run.toml", "--json", "--force", cwd=project)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    result = json.loads(out[out.index("{"):])
    assert result["ran"] == []
    stages = json.loads((project / "out" / "stages.json").read_text())
    assert sorted(result["reused"]) == sorted(stages)


def test_changed_budget_reruns_only_what_depends_on_it(project, interrupted_then_resumed):
    (project / "run2.toml").write_text(SMALL.replace("budget_quantiles = [0.9]", "budget_quantiles = [0.95]"))
    proc = _edgenas("run", "run2.toml", "--json", "--force", cwd=project)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    result = json.loads(out[out.index("{"):])
    assert {"train", "predictor", "calibrate:local-fp32", "pareto:local-fp32"} <= set(result["reused"])
    assert all(s.startswith("deploy:") for s in result["ran"]) and result["ran"]


@pytest.mark.parametrize("text, message", [
    ("[[devices]]\nname='x'\nbudgets_ms=[1]\nprecision='int4'", "devices[0].precision = 'int4': expected \"fp32\" or \"int8\""),
    ("[[devices]]\nname='x'\nbudgets_ms=[-1]", "devices[0].budgets_ms: expected a list of numbers"),
    ("[[devices]]\nname='x'", "devices[0].budgets_ms: missing"),
    ("colour = 1\n[[devices]]\nname='x'\nbudgets_ms=[1]", "colour: unknown key"),
    ("[train]\nepochs = 3\n[[devices]]\nname='x'\nbudgets_ms=[1]", "train.epochs: unknown key"),
    ("[export]\nformats=['tflite-fp16']\n[[devices]]\nname='x'\nbudgets_ms=[1]", "unknown format 'tflite-fp16'"),
    ("[[devices]]\nname='x'\nbudgets_ms=[1]\ncalibration='transfer'", "transfer needs a device calibrated before it"),
    ("[train]\ntotal_steps = 0\n[[devices]]\nname='x'\nbudgets_ms=[1]", "train.total_steps = 0: expected an integer from 1"),
    ("[train]\ntotal_steps = 2.5\n[[devices]]\nname='x'\nbudgets_ms=[1]", "train.total_steps = 2.5: expected an integer from 1"),
    ("[predictor]\nbn_batches = 0\n[[devices]]\nname='x'\nbudgets_ms=[1]", "predictor.bn_batches = 0: expected an integer"),
    ("[train]\ntotal_steps = 50\nsteps_scale = 0.5\n[[devices]]\nname='x'\nbudgets_ms=[1]", "not both"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_run_config(path)
    assert str(err.value).startswith(str(path))
    proc = subprocess.run([sys.executable, "-m", "edgenas.cli", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_examples_parse(tmp_path):
    examples = [p for p in sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.toml"))
                if "[[devices]]" in p.read_text()]  # run configs (training configs live there too)
    assert len(examples) >= 3
    for path in examples:
        data = tomllib.loads(path.read_text())
        supernet = data.get("train", {}).get("checkpoint")
        if supernet and not (path.parent / supernet).is_file():  # a supernet the user brings (mobilenetv3.toml)
            with pytest.raises(UsageError, match="train.checkpoint: .* does not exist"):
                load_run_config(path, out=tmp_path)
            (tmp_path / "supernet.pt").write_bytes(b"")
            data["train"]["checkpoint"] = str(tmp_path / "supernet.pt")
            config = parse_run_config(data, source=str(path), base_dir=path.parent)
        else:
            config = load_run_config(path, out=tmp_path)
        assert config.devices and all(d.budgets_ms or d.budget_quantiles for d in config.devices)


def test_demo_config_is_valid(tmp_path):
    from edgenas.pipeline.demo import demo_config

    config = demo_config(tmp_path / "demo")
    assert [d.label for d in config.devices] == ["local-fp32", "local-tflite-fp32"]
    assert (tmp_path / "demo" / "devices" / "local-tflite.toml").is_file()
    # a fixed training length and the cheaper BN recalibration; examples/demo.toml says the same
    assert config.train_overrides == {"total_steps": 212}
    assert config.bn_batches == 4
    example = load_run_config(Path(__file__).resolve().parents[2] / "examples" / "demo.toml", out=tmp_path / "ex")
    for field in ("train_overrides", "bn_batches", "predictor_samples", "predictor_test", "population", "generations",
                  "top_k", "formats", "dataset", "preset"):
        assert getattr(example, field) == getattr(config, field), field
    assert [(d.budget_quantiles, d.calibration_budget, d.holdout, d.calibration_rounds) for d in example.devices] == [
        (d.budget_quantiles, d.calibration_budget, d.holdout, d.calibration_rounds) for d in config.devices]
    assert parse_run_config({"devices": [{"name": "a", "budgets_ms": [1.0]}]}).devices[0].budgets_ms == (1.0,)


def test_the_next_commands_continue_the_folder(project, interrupted_then_resumed):
    """A finished run prints three next commands; each runs as printed, with no extra flags, on the run's folder,
    and takes what it needs from the folder's manifest (no `--predictor`, no tables folder, no device file here)."""
    manifest = json.loads((project / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "edgenas run folder" and manifest["supernet"] == "supernet/supernet.pt"
    assert manifest["accuracy_predictor"] == "accuracy_predictor.npz" and manifest["report"] == "report.html"
    assert set(manifest["devices"]["local"]["latency"]) == {"fp32"} and manifest["exports"]
    assert "percentile of the predicted latency" in manifest["budgets"][0]["budget_source"]
    proc = _edgenas("run", "run.toml", "--force", cwd=project)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    _report_agrees_with_the_cards(project / "out", out)
    lines = out[out.index("next, on this folder:"):].splitlines()[1:]
    commands = [line.strip() for line in lines if line.strip().startswith("edgenas ")]
    assert [c.split()[1] for c in commands] == ["search", "measure", "eval"], out
    assert not (project / "devices").exists()  # the device is found through the folder, not the current one
    said = []
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "edgenas.cli", *command.split()[1:]], cwd=project,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        reused = [line for line in done.stderr.splitlines() if "reusing from out/" in line]
        assert len(reused) == 1, done.stderr
        said.append(reused[0])
    assert "accuracy predictor out/accuracy_predictor.npz" in said[0] and "latency predictor of local" in said[0]
    assert "supernet out/supernet/supernet.pt" in said[2]


def _report_agrees_with_the_cards(folder: Path, summary: str) -> None:
    """One accuracy per shipped file: the card's, with its split and image count, the same in the summary and the
    report; the report fits a 1,400 px window in Chromium and shows no raw JSON."""
    from edgenas.pipeline.report import accuracy_text
    from tests.pipeline.test_report import CHROMIUM, assert_no_raw_json, chromium_probe

    report = (folder / "report.html").read_text()
    stages = json.loads((folder / "stages.json").read_text())
    # this run's budgets only: the stage book also keeps an earlier run's deploy stages (a resumed run whose
    # calibration moved a budget keeps the old budget's entry and folder), which this summary does not show
    shipped = [v["outputs"] for k, v in stages.items() if k.startswith("deploy:") and v["outputs"].get("card")
               and "/".join(Path(v["outputs"]["card"]).parts[-3:-1]) + "\n" in summary.replace(" ", "\n")]
    assert shipped, summary
    for outcome in shipped:
        card = json.loads(Path(outcome["card"]).read_text())
        acc = card["accuracy"]
        figure = f"{100 * acc['files'][outcome['deployed_file']]:.1f} % ({acc['split']}, {acc['images']} images"
        assert figure in summary and figure in report, figure
        (winner,) = [c for c in outcome["candidates"] if c["arch"] == outcome["arch"]]
        both = accuracy_text(acc["files"][outcome["deployed_file"]], acc["split"], acc["images"], winner["accuracy"],
                             winner["holdout_images"])
        assert both in summary and both in report
    assert "percentile of the predicted latency of 2000 random subnets on local" in report
    assert report.count("<svg class=front") == 1 and "class=shipped" in report
    assert_no_raw_json(report)
    if CHROMIUM is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            assert chromium_probe(folder / "report.html", Path(tmp)).endswith("width:1400 overflow:false wide:0")
