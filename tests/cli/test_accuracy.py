"""End-to-end test of `edgenas predictor fit`: real BN-recalibrated evaluation of subnets of a supernet
checkpoint, stored as it goes (a second run evaluates nothing), the predictor saved beside the checkpoint."""

import json

import numpy as np
import pytest

from edgenas.accuracy import load_accuracy_predictor
from edgenas.cli import main
from edgenas.space import SearchSpace

DATASET = "shapes:samples=600"


def make_checkpoint(folder):
    """An (untrained) supernet checkpoint of the `tiny` space, tied to `shapes` data like a trained one."""
    import torch

    from edgenas.data import load_dataset
    from edgenas.supernet import Supernet
    from edgenas.train.checkpoint import save_checkpoint

    space = SearchSpace.preset("tiny")
    torch.manual_seed(0)
    net = Supernet(space)
    dataset = load_dataset(DATASET, seed=0)
    return save_checkpoint(folder / "supernet.pt", {
        "space": space.to_dict(), "model": net.state_dict(), "dataset": DATASET,
        "dataset_fingerprint": dataset.fingerprint, "seed": 0, "config": {}, "complete": True})


@pytest.mark.slow
def test_predictor_fit_command_evaluates_stores_and_resumes(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path)
    argv = ["predictor", "fit", "--supernet", str(ckpt), "--samples", "14", "--test", "4", "--bn-batches", "1",
            "--store", str(tmp_path / "store.sqlite"), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["samples"] == 14 and first["evaluated_now"] == 14 and first["test_size"] == 4
    assert first["fit"]["train_size"] + first["fit"]["val_size"] == 10
    assert first["paired_images"] > 100 and "noise_ceiling" in first  # the test archs measured paired too
    predictor = load_accuracy_predictor(tmp_path)  # saved beside the checkpoint
    archs = SearchSpace.preset("tiny").sample_many(np.random.default_rng(0), 5)
    assert np.all((predictor.predict(archs) >= 0) & (predictor.predict(archs) <= 1))
    manifest = json.loads((tmp_path / "accuracy_predictor.npz.manifest.json").read_text())
    assert manifest["inputs"]["supernet"]["path"] == str(ckpt) and manifest["test"]["test_size"] == 4
    assert main(argv) == 0  # everything comes from the store now
    second = json.loads(capsys.readouterr().out)
    assert second["evaluated_now"] == 0 and second["test_rmse"] == first["test_rmse"]


def test_predictor_fit_rejects_bad_arguments(tmp_path, capsys):
    assert main(["predictor", "fit", "--supernet", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predictor", "fit", "--supernet", str(tmp_path / "none.pt"), "--samples", "0"]) == 2
    assert "--samples = 0: expected an integer from 1" in capsys.readouterr().err
