"""The deploy stage closes the loop the same way for `edgenas search` and `edgenas run`: the same candidates, the same
winner by the one rule, the shipped file the measured one; constraints mean the same in the CLI and a run config.

Real parts: a supernet checkpoint, `edgenas run` calibrating this machine (ONNX Runtime) and fitting the accuracy
predictor, real ONNX export of the candidates, interleaved measurement and the SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgenas.artifacts import sha256_file
from edgenas.cli import main
from edgenas.search.problem import Constraints
from tests.cli.test_accuracy import make_checkpoint

LOCAL = """
name = "deploy-test-local"     # a device known only by this file's path (not one of the repo's devices/)
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

RUN = """
out = "out"
seed = 0
[train]
checkpoint = "supernet.pt"
[predictor]
samples = 16
test = 5
bn_batches = 1                 # each subnet's BatchNorm from one batch, not 8 (the search below says the same)
[search]
population = 16
generations = 8
top_k = 2
[export]
formats = ["onnx"]
[[devices]]
name = "local.toml"
precision = "fp32"
budget_quantiles = [0.8]
max_macs = 10                  # millions of MACs, as --max-macs 10
calibration = "whole-model"
calibration_budget = 6
holdout = 3
"""

MAX_MACS_M = 10


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    make_checkpoint(root)
    (root / "local.toml").write_text(LOCAL)
    (root / "run.toml").write_text(RUN)
    assert main(["run", str(root / "run.toml"), "--json", "--force"]) == 0  # an untrained supernet: past the gate
    stages = json.loads((root / "out" / "stages.json").read_text())
    (deployed,) = [v["outputs"] for k, v in stages.items() if k.startswith("deploy:")]
    (calibrated,) = [v["outputs"] for k, v in stages.items() if k.startswith("calibrate:")]
    (budget,) = [float(k.split(":")[-1].removesuffix("ms")) for k in stages if k.startswith("deploy:")]
    return root, deployed, calibrated, budget


@pytest.mark.slow
def test_search_and_run_choose_the_same_arch(ran, capsys):
    root, deployed, calibrated, budget = ran
    capsys.readouterr()
    rc = main(["search", "--supernet", str(root / "supernet.pt"), "--device", str(root / "local.toml"),
               "--predictor", str(root / "out" / "accuracy_predictor.npz"), "--latency-predictor",
               calibrated["predictor"], "--max-latency-ms", repr(budget), "--max-macs", str(MAX_MACS_M),
               "--precision", "fp32", "--population", "16", "--generations", "8", "--top-k", "2", "--seed", "0",
               "--bn-batches", "1",
               "--store", str(root / "search-store.sqlite"), "--out", str(root / "search"), "--json"])
    assert rc == 0
    searched = json.loads(capsys.readouterr().out)
    # the same candidates, in the same order, from the same predictors: one search policy (the budget's margins);
    # a second round follows only what each run measured, so the first rounds are compared
    run_candidates = [c["arch"] for c in deployed["candidates"] if c["round"] == 1]
    assert [c["arch"] for c in searched["verification"]["candidates"] if c["round"] == 1] == run_candidates
    # the same limits in the same units: --max-macs 10 and max_macs = 10 both mean 10 million MACs
    run_result = json.loads(Path(deployed["result"]).read_text())
    assert searched["constraints"]["max_macs"] == run_result["constraints"]["max_macs"] == MAX_MACS_M * 1_000_000
    assert all(c["predicted"]["macs"] <= MAX_MACS_M * 1e6 for c in run_result["top"])
    # the same winner by the one rule: each run measured its candidates afresh, so the verdicts are compared first
    run_meets = [c["meets_budget"] for c in deployed["candidates"]]
    search_meets = [c["measured"]["meets_latency"] for c in searched["verification"]["candidates"]]
    if run_meets == search_meets:
        assert searched["verified"] is (deployed["arch"] is not None)
        if deployed["arch"] is not None:
            assert searched["arch"] == deployed["arch"]
    # the holdout accuracies the winner is picked by are the same figures in both
    run_acc = [c["accuracy"] for c in deployed["candidates"] if c["round"] == 1]
    assert [c["measured"]["accuracy"] for c in searched["verification"]["candidates"]
            if c["round"] == 1] == pytest.approx(run_acc)


@pytest.mark.slow
def test_the_shipped_winner_is_the_measured_file(ran):
    root, deployed, _calibrated, budget = ran
    # the budget sits at the 0.8 quantile of the space's predicted latency, and a first round that none meets
    # is followed by a tighter one: no winner here is a failure of the loop, not of the machine
    assert deployed["arch"] is not None, f"no candidate met {budget} ms when measured: {deployed['note']}"
    (winner,) = [c for c in deployed["candidates"] if c["arch"] == deployed["arch"]]
    shipped = Path(deployed["export_dir"]) / deployed["deployed_file"]
    assert sha256_file(shipped) == winner["sha256"] == sha256_file(winner["model"]) == deployed["sha256"]
    card = json.loads((Path(deployed["export_dir"]) / "card.json").read_text())
    assert {f["name"]: f["sha256"] for f in card["files"]}[shipped.name] == winner["sha256"]
    (measured,) = card["latency"]["measured"]
    assert measured["latency_ms"] == winner["latency_ms"] == deployed["measured_latency_ms"] <= budget
    # how sure the choice was: the predictor's figure for the winner (the one the search ranked it by)
    assert card["accuracy_prediction"]["predicted_top1"] == pytest.approx(winner["predicted_accuracy"])


def test_one_constraint_builder_for_user_units():
    from edgenas.pipeline.run_config import parse_run_config
    from edgenas.pipeline.runner import _constraints

    config = parse_run_config({"devices": [{"name": "local", "budgets_ms": [2.0], "max_macs": 300,
                                            "max_sram_kb": 256, "max_flash_kb": 1024.5}]})
    from_run = _constraints(config.devices[0], 2.0)
    from_cli = Constraints.from_user_units(max_latency_ms=2.0, max_sram_kb=256, max_flash_kb=1024.5, max_macs_m=300,
                                           precision="fp32")
    assert from_run == from_cli
    assert from_cli.max_macs == 300_000_000 and from_cli.max_sram_bytes == 256 * 1024
    assert from_cli.max_flash_bytes == int(1024.5 * 1024)


def test_a_failed_export_check_exits_1_and_shows_in_the_summary(tmp_path, capsys):
    from edgenas.cli.run import _finish
    from edgenas.pipeline.runner import RunResult

    budget = {"device": "local", "runtime": "tflite", "precision": "int8", "budget_ms": 2.0, "arch": {"resolution": 32},
              "measured_latency_ms": 1.5, "accuracy": 0.9, "meets_budget": True, "export_dir": str(tmp_path),
              "note": "export checks failed: int8 top-1 agreement 0.80 < 0.95",
              "problems": ["int8 top-1 agreement 0.80 < 0.95"]}
    result = RunResult(tmp_path, tmp_path / "report.html", tmp_path / "supernet.pt", [], [], {}, [budget])
    assert _finish(result, as_json=False) == 1
    out, err = capsys.readouterr()
    assert "EXPORT CHECKS FAILED: int8 top-1 agreement 0.80 < 0.95" in out
    assert "failed its export checks" in err
    assert _finish(result, as_json=True) == 1
    assert json.loads(capsys.readouterr().out)["budgets"][0]["problems"] == budget["problems"]
    assert _finish(RunResult(tmp_path, tmp_path / "r.html", tmp_path / "s.pt", [], [], {}, [
        {**budget, "problems": [], "note": ""}]), as_json=True) == 0


def test_the_winner_is_the_most_accurate_candidate_that_meets_the_budget_when_measured(tmp_path):
    """The rule users rely on: among the candidates whose measured figure meets the budget, the most accurate
    wins; a faster-but-over candidate never does; one whose export checks failed only when no other meets it;
    on equal accuracy the better-predicted (earlier) candidate."""
    from edgenas.deploy.stage import MeasuredCandidate, pick_winner
    from edgenas.space import SearchSpace

    space = SearchSpace.preset("tiny")
    archs = [space.sample(np.random.default_rng(i)) for i in range(5)]

    def cand(i, accuracy, meets, problems=()):
        return MeasuredCandidate(arch=archs[i], predicted={}, model=tmp_path / f"m{i}.onnx", accuracy=accuracy,
                                 meets_budget=meets, problems=list(problems))

    over_but_best = cand(0, 0.99, False)
    low, high = cand(1, 0.90, True), cand(2, 0.95, True)
    failed_check = cand(3, 0.97, True, ["int8 file failed verification"])
    assert pick_winner([over_but_best, low, high, failed_check]) is high
    assert pick_winner([over_but_best, failed_check]) is failed_check
    tie_first, tie_second = cand(1, 0.95, True), cand(4, 0.95, True)
    assert pick_winner([tie_first, tie_second]) is tie_first
    assert pick_winner([over_but_best]) is None


def test_holdout_noise_does_not_pick_the_winner_but_a_real_advantage_does(tmp_path):
    """Candidates are evaluated on the same holdout images; an advantage of a few images out of 200 is noise
    (the better-predicted, earlier candidate wins), one of many images on a large holdout is real (it wins)."""
    from edgenas.deploy.stage import MeasuredCandidate, accuracy_advantage, pick_winner
    from edgenas.space import SearchSpace

    space = SearchSpace.preset("tiny")
    archs = [space.sample(np.random.default_rng(i)) for i in range(3)]

    def cand(i, correct):
        return MeasuredCandidate(arch=archs[i], predicted={}, model=tmp_path / f"m{i}.onnx", correct=correct,
                                 accuracy=sum(correct) / len(correct), meets_budget=True)

    n = 200
    base = [i % 20 != 0 for i in range(n)]  # 190 / 200 right
    three_more = [c or i in (0, 20, 40) for i, c in enumerate(base)]  # 193 / 200: 3 images, noise
    first, second = cand(0, base), cand(1, three_more)
    diff, se = accuracy_advantage(second, first)
    assert diff == pytest.approx(3 / n) and 0 < diff < 2 * se
    assert pick_winner([first, second]) is first

    ten_more = [True] * n  # 200 / 200: all 10 images the first got wrong, none it got right lost: real
    assert pick_winner([first, cand(1, ten_more)]).correct is ten_more

    big = 5000  # the same 1.5-point advantage on 5,000 images is real
    base_big = [i % 20 != 0 for i in range(big)]
    plus = [c or (i % 20 == 0 and i % 60 == 0) for i, c in enumerate(base_big)]
    first_big, better_big = cand(0, base_big), cand(2, plus)
    assert better_big.accuracy - first_big.accuracy > 0.015
    assert pick_winner([first_big, better_big]) is better_big


def test_a_second_round_only_where_the_measurements_show_the_predictor_misled_the_search(tmp_path):
    """`measured_scale`: over-predicted candidates and a winner far under the budget search again larger (the
    median ratio); none meeting the budget with every candidate under-predicted searches tighter (the largest
    ratio); candidates scattered around their predictions, or a winner that fills its budget, change nothing."""
    from edgenas.deploy.stage import MeasuredCandidate, measured_scale
    from edgenas.devices.measurement import Measurement
    from edgenas.space import SearchSpace

    space = SearchSpace.preset("tiny")
    archs = [space.sample(np.random.default_rng(i)) for i in range(3)]

    def cand(i, predicted, measured):
        m = Measurement(model_path=f"m{i}.onnx", model_sha256="0" * 64, device="local", runtime="onnxruntime",
                        latency_ms=measured)
        return MeasuredCandidate(arch=archs[i], predicted={"latency_ms": predicted}, measurement=m,
                                 meets_budget=measured <= 1.0)

    over = [cand(0, 1.0, 0.70), cand(1, 0.9, 0.72), cand(2, 0.8, 0.60)]  # ratios 0.70, 0.80, 0.75
    assert measured_scale(over, over[1], budget=1.0) == pytest.approx(0.75)
    assert measured_scale(over, over[1], budget=0.9) is None  # 0.72 is 80 % of 0.9: the budget is used
    scattered = [cand(0, 1.0, 0.70), cand(1, 0.7, 0.72)]
    assert measured_scale(scattered, scattered[0], budget=1.0) is None
    under = [cand(0, 0.9, 1.2), cand(1, 0.8, 1.1), cand(2, 0.7, 1.372)]  # ratios 1.33, 1.375, 1.96
    assert measured_scale(under, None, budget=0.95) == pytest.approx(1.96)
    assert measured_scale(under[:1], None, budget=0.95) is None  # one candidate says too little


@pytest.mark.slow
def test_a_misleading_latency_predictor_is_corrected_by_a_second_round(ran, tmp_path):
    """The search is handed a latency predictor that predicts twice its calibrated figure: the first round's
    candidates measure well under their predictions. The deploy stage searches again at the budget divided by the
    measured ratio, measures the new candidates beside the first ones and ships the winner of both rounds, which
    meets the budget."""
    from edgenas import load_device
    from edgenas.deploy.budget import load_predictors
    from edgenas.deploy.stage import FILL_TARGET, deploy
    from edgenas.export.subnet import ExportOptions
    from edgenas.search.budget_candidates import search_for_budget
    from edgenas.store import Store
    from edgenas.train.checkpoint import OpenedCheckpoint

    root, _deployed, calibrated, _budget = ran
    acc, lat = load_predictors(root / "supernet.pt", str(root / "local.toml"),
                               accuracy_predictor=root / "out" / "accuracy_predictor.npz",
                               latency_predictor=calibrated["predictor"])

    class Doubled:
        def predict(self, archs):
            return 2.0 * np.asarray(lat.predict(archs))

    pool = acc.space.sample_many(np.random.default_rng(5), 200)
    true = np.asarray(lat.predict(pool))
    budget = float(np.quantile(true, 0.7))  # a budget the space can fill, by the honest predictor
    constraints = Constraints(max_latency_ms=budget, precision="fp32")

    def search(scale=1.0):
        return search_for_budget(acc.space, acc, Doubled(), constraints, population=16, generations=8, seed=0,
                                 top_k=2, device="local", latency_scale=scale)

    with load_device(str(root / "local.toml")) as device, Store(tmp_path / "store.sqlite") as store:
        # ONNX only, as this module's run ships: the second round is under test, not the int8 conversions of an
        # untrained supernet (tests/deploy/test_stage.py's passed-over test covers shipping every format)
        done = deploy(search(), OpenedCheckpoint(root / "supernet.pt"), device, out_dir=tmp_path / "models",
                      precision="fp32", options=ExportOptions(formats=("onnx",), bn_batches=1), top_k=2, store=store,
                      ship_dir=tmp_path / "ship", search_again=search, progress=False, log=lambda line: None)
    first = [c for c in done.candidates if c.round == 1]
    assert all(c.latency_ms < 0.95 * c.predicted["latency_ms"] for c in first if c.latency_ms is not None)
    if done.latency_scale is None:  # the first round filled the budget after all: nothing to correct
        assert done.winner is not None and done.winner.latency_ms >= FILL_TARGET * budget
        return
    assert 0.2 < done.latency_scale < 0.95
    second = [c for c in done.candidates if c.round == 2]
    assert second and all(c.model is not None and c.model.parent.name.startswith("candidate-") for c in second)
    # the second search ran at the corrected limit (the first at the budget), and brought archs not measured yet
    assert max(c.predicted["latency_ms"] for c in first) <= budget * 1.0001
    assert all(c.predicted["latency_ms"] <= budget / done.latency_scale * 1.0001 for c in second)
    assert not {c.arch for c in second} & {c.arch for c in first}
    assert done.winner is not None and done.winner.meets_budget and done.winner.latency_ms <= budget
    assert done.to_dict()["latency_scale"] == done.latency_scale
    assert (tmp_path / "ship" / "card.json").is_file()


def test_a_candidates_accuracy_is_the_accuracy_datasets_figure_for_its_arch(tmp_path):
    """The deploy stage evaluates the prepared (BN re-estimated) subnet that ships instead of recalibrating the
    supernet once more: the same per-image results as `evaluate_correct`, the figure the accuracy predictor
    learned from, on a supernet trained enough for subnets to differ; the prepared export's kept holdout logits
    give the same answers."""
    from edgenas.deploy.stage import model_correct
    from edgenas.export.subnet import ExportOptions, prepare_export
    from edgenas.train.checkpoint import OpenedCheckpoint
    from edgenas.train.config import Phase, TrainConfig
    from edgenas.train.evaluate import evaluate_correct
    from edgenas.train.trainer import train

    config = TrainConfig(preset="tiny", dataset="digits", batch_size=32, bn_batches=2, final_samples=0,
                         compare_alone=False, eval_every_phase=False, checkpoint_every=1000,
                         phases=(Phase("full", steps=25, lr=0.1, distill=False),
                                 Phase("all", steps=15, lr=0.03, kernels="all", depths="all", expands="all",
                                       subnets_per_step=2, smallest_first=True)))
    result = train(config, tmp_path / "run", threads=1, progress=False, tensorboard=False)
    opened = OpenedCheckpoint(result.checkpoint)
    supernet, dataset = opened.supernet, opened.dataset()
    options = ExportOptions(formats=("onnx",), bn_batches=3)
    archs = [supernet.space.largest(), supernet.space.smallest()] + supernet.space.sample_many(np.random.default_rng(3), 2)
    figures = []
    for arch in archs:
        prepared = prepare_export(supernet, arch, dataset, options=options, info=opened.info, log=lambda m: None)
        shipped = model_correct(prepared.model, dataset, "holdout", arch.resolution)
        assert shipped == evaluate_correct(supernet, arch, dataset, "holdout", bn_batches=options.bn_batches)
        assert prepared.holdout_correct() == shipped  # from the logits the export keeps: the same answers
        assert set(prepared.logits) == {"holdout"}
        figures.append(sum(shipped) / len(shipped))
    assert len(set(figures)) > 1 and max(figures) > 0.3  # subnets that differ, far above chance (10 %)


# The int8 files of the passed-over test are calibrated on 32 images, not the 200 a user's export takes: which file
# fails its check is what the test follows, not how well int8 is calibrated (the writer observes every op's output on
# every calibration image: 200 images made these 12 conversions about half of the test's time).
CALIBRATION_IMAGES = 32


def _agreements(opened, archs, tmp_path):
    """Each arch's int8 file's top-1 agreement with fp32 (val + holdout images), exported as the deploy ships it."""
    from edgenas.export.subnet import ExportOptions, export_prepared, prepare_export

    options = ExportOptions(formats=("tflite-int8",), bn_batches=1, micro=False, min_agreement=0.0,
                            calibration_images=CALIBRATION_IMAGES)
    out = []
    for i, arch in enumerate(archs):
        prep = prepare_export(opened.supernet, arch, opened.dataset(), options=options, info=opened.info,
                              log=lambda m: None)
        done = export_prepared(prep, tmp_path / f"probe-{i}", space=opened.supernet.space, options=options,
                               raise_on_problems=False, log=lambda m: None)
        out.append(done.checks[0].top1_agreement)
    return out


@pytest.mark.slow
def test_a_candidate_whose_int8_file_fails_is_passed_over_and_the_next_ships(tmp_path, capsys, monkeypatch):
    """The device runs ONNX, the run ships int8 too: the first pick's int8 file fails its check, so the next pick
    ships, and the summary, the card and the report's top table say which was passed over and why. With a check
    no file passes, the first pick ships with every candidate's reason and the run fails."""
    import edgenas.export.verify as verify
    from edgenas import load_device
    from edgenas.cli.run import _finish
    from edgenas.deploy.stage import deploy, pick_order, pick_winner
    from edgenas.export.subnet import ExportOptions
    from edgenas.pipeline.report import BudgetResult, DeviceReport, ReportData, render_report
    from edgenas.pipeline.runner import RunResult
    from edgenas.search.loop import Candidate, SearchResult
    from edgenas.space import SearchSpace
    from edgenas.train.checkpoint import OpenedCheckpoint

    # the tiny supernet is near chance, where agreement is not judged (`verify.near_chance`): judged here all the
    # same, as the failure whose passing-over this test follows
    monkeypatch.setattr(verify, "near_chance", lambda *args: False)
    make_checkpoint(tmp_path)
    (tmp_path / "local.toml").write_text(LOCAL)
    opened = OpenedCheckpoint(tmp_path / "supernet.pt")
    space = SearchSpace.preset("tiny")
    archs = space.sample_many(np.random.default_rng(3), 4)
    agree = _agreements(opened, archs, tmp_path)
    # two candidates whose int8 files agree with fp32 differently: the first pick the worse one
    order = sorted(range(len(archs)), key=lambda i: agree[i])
    first, second = order[0], order[-1]
    assert agree[first] < agree[second], agree
    top = [Candidate(archs[i], {"accuracy": 0.9 - 0.1 * k, "latency_ms": 0.1}) for k, i in enumerate((first, second))]
    result = SearchResult("evolution", "tiny", "deploy-test-local", Constraints(max_latency_ms=1e3), {}, top[0], top, [],
                          2, 2, 0.0)
    threshold = (agree[first] + agree[second]) / 2

    def run(min_agreement, name):
        # (litert-torch's second conversion of a failed int8 file is tested in test_export_subnet; 15-30 s each)
        options = ExportOptions(formats=("onnx", "tflite-int8"), bn_batches=1, micro=False, min_agreement=min_agreement,
                                litert_fallback=False, calibration_images=CALIBRATION_IMAGES)
        with load_device(str(tmp_path / "local.toml")) as device:
            return deploy(result, opened, device, out_dir=tmp_path / name / "models", precision="fp32",
                          options=options, ship_dir=tmp_path / name / "ship", progress=False, log=lambda m: None)

    done = run(threshold, "one-fails")
    picked_first = pick_winner(pick_order(done.candidates))
    assert picked_first.arch == archs[first]  # the first pick is the one whose int8 file fails
    assert done.winner.arch == archs[second] and done.shipped.ok and done.problems == []
    (over,) = done.passed_over
    assert over.arch == archs[first] and any("top-1 agrees with fp32" in r for r in over.reasons)
    assert "shipped the" in done.choice_note and "candidate: tflite-int8" in done.choice_note
    card = json.loads((tmp_path / "one-fails" / "ship" / "card.json").read_text())
    assert card["arch"] == archs[second].to_dict() and card["passed_over"][0]["arch"] == archs[first].to_dict()
    assert "Passed over" in (tmp_path / "one-fails" / "ship" / "card.md").read_text()
    int8 = [c for c in card["verification"] if c["format"] == "tflite-int8"][0]
    assert int8["images"] == opened.dataset().size("val") + opened.dataset().size("holdout")  # every image it may use
    assert int8["drop_interval_points"] is not None

    budget = {"device": "deploy-test-local", "runtime": "onnxruntime", "precision": "fp32", "budget_ms": 1e3,
              "arch": archs[second].to_dict(), "measured_latency_ms": 0.1, "accuracy": 0.5, "meets_budget": True,
              "export_dir": str(tmp_path / "one-fails" / "ship"), "note": done.choice_note, "problems": done.problems,
              "choice": done.choice_note}
    assert _finish(RunResult(tmp_path, tmp_path / "r.html", tmp_path / "s.pt", [], [], {}, [budget]), False) == 0
    assert "passed over: " + done.choice_note in capsys.readouterr().out
    report = ReportData("t", "shapes", "tiny", devices=[DeviceReport("d", "onnxruntime", "fp32", budgets=[
        BudgetResult(1e3, budget["arch"], card=card, choice=done.choice_note)])])
    top_table = render_report(report, tmp_path / "report").read_text().split("<h2>Device")[0]
    assert "passed" in top_table and "candidate: tflite-int8" in top_table

    none = run(1.01, "none-passes")  # no file agrees on more than every image
    assert none.winner.arch == archs[first] and not none.shipped.ok and len(none.passed_over) == 2
    assert "no candidate passed every check" in none.choice_note
    assert any(p.startswith("also failed: ") for p in none.problems)
    failed = {**budget, "problems": none.problems, "choice": none.choice_note}
    assert _finish(RunResult(tmp_path, tmp_path / "r.html", tmp_path / "s.pt", [], [], {}, [failed]), False) == 1
    err = capsys.readouterr().err
    assert "failed its export checks" in err and "also failed" in err
    top_table = render_report(ReportData("t", "shapes", "tiny", devices=[DeviceReport("d", "onnxruntime", "fp32", budgets=[
        BudgetResult(1e3, budget["arch"], card=card, problems=none.problems)])]), tmp_path / "r2").read_text()
    assert "FAILED" in top_table.split("<h2>Device")[0]


def test_a_budget_job_keys_what_decides_the_outcome(tmp_path):
    """The stage-book key is derived from the job's fields: input files by their SHA-256, the device by its
    description, not where the outputs go; the job and the outcome go through the stage book's JSON and back."""
    from edgenas.deploy.budget import DEPLOY_POLICY, BudgetJob, BudgetOutcome

    for name in ("supernet.pt", "acc.npz", "lat.json"):
        (tmp_path / name).write_bytes(name.encode())
    constraints = Constraints.from_user_units(max_latency_ms=2.0, max_macs_m=10, precision="fp32")
    job = BudgetJob(tmp_path / "supernet.pt", "local", constraints, tmp_path / "search", tmp_path / "acc.npz",
                    tmp_path / "lat.json", top_k=2, ship_dir=tmp_path / "ship", store=tmp_path / "store.sqlite")
    assert BudgetJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    key = job.key({"name": "local"})
    assert key["checkpoint"] == sha256_file(tmp_path / "supernet.pt") and key["device"] == {"name": "local"}
    assert key["constraints"] == constraints.to_dict() and key["top_k"] == 2
    assert not {"out_dir", "ship_dir", "store"} & set(key) and DEPLOY_POLICY.items() <= key.items()
    from dataclasses import replace

    assert job.key({}) == replace(job, out_dir=tmp_path / "elsewhere", store=None).key({})  # where: not keyed
    assert job.key({}) != replace(job, seed=1).key({})
    (tmp_path / "acc.npz").write_bytes(b"refitted")
    assert job.key({}) != key | {"device": {}}  # a refitted predictor runs the stage again
    outcome = BudgetOutcome(2.0, arch={"resolution": 32}, measured_latency_ms=1.5, meets_budget=True,
                            candidates=[{"arch": {"resolution": 32}, "round": 1}], problems=["x"])
    saved = json.loads(json.dumps(outcome.to_dict()))
    assert "search" not in saved and "deployment" not in saved
    assert BudgetOutcome.from_dict(saved) == outcome
    assert BudgetOutcome.from_dict({"arch": None, "note": "impossible"}).note == "impossible"  # an older book's entry
