"""Once-for-All's published files in: supernets, accuracy predictor and phone latency tables (`edgenas import`).

The inputs have Once-for-All's layout with seeded values (`tests/ofa_fixtures.py`); the references were computed
once by Once-for-All's own code (`tools/make_ofa_fixtures.py`). Nothing here needs that code or the network.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ofa_fixtures import DATA, WIDTHS, images, lut_archs, ofa_weights, predictor_archs, predictor_weights, to_arch

from edgenas.cli import main
from edgenas.errors import UsageError

TOL = 1e-4  # the bound on logits of order one


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each width's seeded Once-for-All file and its import: {width: (source path, supernet path)}."""
    folder = tmp_path_factory.mktemp("ofa")
    out = {}
    for width in WIDTHS:
        source = folder / f"ofa_w{width}.pth"
        torch.save({"state_dict": ofa_weights(width)}, source)
        target = folder / f"w{width}" / "supernet.pt"
        assert main(["import", "ofa", str(source), "--out", str(target)]) == 0
        out[width] = (source, target)
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_every_reference_subnet_gives_once_for_alls_logits_in_place_and_extracted(imported, width):
    from edgenas import load_supernet

    net = load_supernet(imported[width][1])
    assert net.space.name == ("mobilenetv3" if width == "1.0" else "mobilenetv3-w1.2")
    samples = json.loads((DATA / f"subnets_w{width}.json").read_text())
    reference = np.load(DATA / f"logits_w{width}.npz")["logits"]
    assert {s["r"][0] for s in samples} >= {128, 224}
    with torch.no_grad():
        for sample, ref in zip(samples, reference):
            arch = to_arch(sample)
            x = torch.from_numpy(images(2, arch.resolution))
            in_place = net.set_active(arch)(x).numpy()
            extracted = net.extract(arch).eval()(x).numpy()
            assert np.abs(in_place - ref).max() <= TOL, arch
            assert np.abs(extracted - ref).max() <= TOL, arch
    assert np.abs(reference).max() > 0.5  # logits of order one


def test_the_fixture_weights_would_show_a_wrong_mapping(imported):
    """The seeded weights make every choice matter: a kernel matrix left out moves the logits far past TOL."""
    from edgenas import load_supernet

    net = load_supernet(imported["1.2"][1]).eval()
    largest = net.space.largest(160)
    arch = net.space.arch(160, largest.depths, (5,) + largest.kernels[1:], largest.expands)
    x = torch.from_numpy(images(2, 160))
    with torch.no_grad():
        right = net.set_active(arch)(x)
        net.stages[0][0].depthwise.transforms["5"].copy_(torch.eye(25))
        wrong = net(x)
    assert (right - wrong).abs().max() > 100 * TOL


def test_the_manifest_names_the_source_and_its_hash(imported):
    from edgenas.artifacts import read_manifest, sha256_file

    source, target = imported["1.2"]
    manifest = read_manifest(target)
    assert manifest["inputs"]["once_for_all_checkpoint"]["sha256"] == sha256_file(source)
    assert manifest["imported_from"]["classifier"] == "Once-for-All's"
    assert manifest["space"]["width_mult"] == 1.2


def test_older_key_spellings_import_to_the_same_weights(imported, tmp_path):
    source, target = imported["1.0"]
    state = torch.load(source, weights_only=True)["state_dict"]
    old = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
           for k, v in state.items()}
    old = {k.replace(".bn.bn.", ".bn.").replace(".conv.conv.weight", ".conv.weight"): v for k, v in old.items()}
    assert old.keys() != state.keys()
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    assert main(["import", "ofa", str(tmp_path / "old.pth"), "--out", str(tmp_path / "old.pt")]) == 0
    a = torch.load(target, weights_only=True)["model"]
    b = torch.load(tmp_path / "old.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_num_classes_puts_a_new_classifier_on_the_same_features(imported, tmp_path):
    from edgenas import load_supernet
    from edgenas.artifacts import read_manifest

    source, target = imported["1.0"]
    out = tmp_path / "ten.pt"
    assert main(["import", "ofa", str(source), "--out", str(out), "--num-classes", "10"]) == 0
    ten, full = load_supernet(out), load_supernet(target)
    assert ten.num_classes == 10 and ten.classifier.weight.shape == (10, 1280)
    assert read_manifest(out)["imported_from"]["classifier"] == "new, untrained"
    x = torch.from_numpy(images(1, 160))
    arch = ten.space.smallest(160)
    with torch.no_grad():
        assert torch.equal(ten.set_active(arch).features(x), full.set_active(arch).features(x))


def test_resolutions_narrow_the_space_the_checkpoint_offers(imported, tmp_path, capsys):
    """--resolutions 160,...,224 (Once-for-All's Note10 sizes): the checkpoint's space offers those sizes only, with
    the same weights; a size the supernet does not offer is refused in one line."""
    from edgenas import load_supernet

    source, target = imported["1.2"]
    out = tmp_path / "real.pt"
    assert main(["import", "ofa", str(source), "--out", str(out), "--resolutions", "224,160,176,192,208"]) == 0
    narrowed, full = load_supernet(out), load_supernet(target)
    assert narrowed.space.resolutions == (160, 176, 192, 208, 224)
    assert narrowed.space.replace(resolutions=full.space.resolutions) == full.space
    assert all(torch.equal(a, b) for a, b in zip(narrowed.state_dict().values(), full.state_dict().values()))
    # --dataset: the data every later stage reads from the checkpoint, with a classifier for its classes
    from edgenas.train.checkpoint import OpenedCheckpoint

    shapes = tmp_path / "shapes.pt"
    assert main(["import", "ofa", str(source), "--out", str(shapes), "--dataset", "shapes:samples=100"]) == 0
    opened = OpenedCheckpoint(shapes)
    assert opened.info["dataset"] == "shapes:samples=100" and opened.dataset().num_classes == opened.space.num_classes
    capsys.readouterr()
    assert "has 10 classes" in _refused(capsys, "import", "ofa", str(source), "--out", str(tmp_path / "x.pt"),
                                        "--dataset", "shapes:samples=100", "--num-classes", "4")
    assert "150 is not an input size" in _refused(capsys, "import", "ofa", str(source), "--out",
                                                  str(tmp_path / "x.pt"), "--resolutions", "150,224")
    assert "separated by commas" in _refused(capsys, "import", "ofa", str(source), "--out", str(tmp_path / "x.pt"),
                                             "--resolutions", "160-224")


def _refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_files_that_are_not_such_a_checkpoint_are_refused_naming_what_does_not_fit(imported, tmp_path, capsys):
    source, _ = imported["1.0"]
    state = torch.load(source, weights_only=True)["state_dict"]
    out = str(tmp_path / "x.pt")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert "not a PyTorch checkpoint" in _refused(capsys, "import", "ofa", str(tmp_path / "text.pth"), "--out", out)
    cases = {
        "wrong_shape": ({**state, "blocks.3.conv.point_linear.conv.conv.weight": torch.zeros(24, 10, 1, 1)},
                        "blocks.3.conv.point_linear.conv.weight has shape [24, 10, 1, 1]"),
        "missing": ({k: v for k, v in state.items() if "blocks.7.conv.depth_conv.se" not in k},
                    "lacks 'blocks.7.conv.depth_conv.se.fc.reduce.weight'"),
        "extra": ({**state, "blocks.21.conv.point_linear.conv.weight": torch.zeros(1)}, "unexpected entry 'blocks.21"),
        "other_net": ({"0.weight": torch.zeros(400, 128)}, "no first_conv.conv.weight"),
        "other_width": ({**state, "first_conv.conv.weight": torch.zeros(32, 3, 3, 3)}, "[16, 3, 3, 3] (w1.0)"),
    }
    for name, (bad, words) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / f"{name}.pth")
        assert words in _refused(capsys, "import", "ofa", str(tmp_path / f"{name}.pth"), "--out", out), name
    assert not (tmp_path / "x.pt").exists()


def test_a_refusal_is_one_line_and_exit_2_from_the_command(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"\x80\x02junk")
    res = subprocess.run([sys.executable, "-m", "edgenas.cli", "import", "ofa", str(tmp_path / "a.pth"), "--out",
                          str(tmp_path / "b.pt")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# ---- accuracy predictor --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictor")
    torch.save(predictor_weights(), folder / "acc_predictor.pth")
    out = folder / "accuracy_predictor.npz"
    assert main(["import", "ofa-predictor", str(folder / "acc_predictor.pth"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def predictor(predictor_file):
    from edgenas.accuracy.predictor import load_accuracy_predictor

    return load_accuracy_predictor(predictor_file)


def test_the_imported_predictor_equals_once_for_alls_on_1000_archs(predictor):
    reference = np.load(DATA / "predictor_reference.npz")["accuracy"]
    got = predictor.predict([to_arch(s) for s in predictor_archs(len(reference))])
    assert len(reference) == 1000
    assert np.abs(got - reference).max() <= 1e-5
    assert reference.max() > 1.0  # read as its authors read it: no clipping, no sigmoid


def test_a_resolution_without_a_slot_is_refused_not_rounded(predictor):
    arch = to_arch(predictor_archs(1)[0])
    for resolution in (132, 112, 240):
        with pytest.raises(UsageError, match=f"resolution {resolution} has no slot.*128, 144, 160"):
            predictor.predict([arch.__class__(resolution, arch.depths, arch.kernels, arch.expands)])


def test_a_file_that_is_not_the_predictor_is_refused(tmp_path, capsys):
    torch.save({"layers.0.weight": torch.zeros(400, 128)}, tmp_path / "p.pth")
    assert "unexpected entry 'layers.0.weight'" in _refused(capsys, "import", "ofa-predictor", str(tmp_path / "p.pth"),
                                                            "--out", str(tmp_path / "p.npz"))
    weights = {**predictor_weights(), "0.weight": torch.zeros(400, 100)}
    torch.save(weights, tmp_path / "p.pth")
    assert "0.weight has shape [400, 100]" in _refused(capsys, "import", "ofa-predictor", str(tmp_path / "p.pth"),
                                                        "--out", str(tmp_path / "p.npz"))


# ---- latency tables ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """The fixture tables imported as device `phone` in a project folder of its own."""
    folder = tmp_path_factory.mktemp("phone")
    files = [str(DATA / f"fixture_{r}_lookup_table.yaml") for r in (176, 192)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert main(["import", "ofa-lut", *files, "--device", "phone"]) == 0
    return folder


def test_the_imported_table_sums_equal_once_for_alls(phone, monkeypatch):
    from edgenas.latency import load_latency_predictor

    monkeypatch.chdir(phone)
    predictor = load_latency_predictor("phone")
    reference = json.loads((DATA / "lut_reference.json").read_text())
    for resolution, sums in reference.items():
        got = predictor.predict([to_arch(s) for s in lut_archs(int(resolution), len(sums))])
        assert np.abs(got / np.array(sums) - 1).max() <= 1e-6
    arch = to_arch(lut_archs(176, 1)[0])
    with pytest.raises(UsageError, match="resolution 160 is not in the latency predictor of phone.*176, 192"):
        predictor.predict([arch.__class__(160, arch.depths, arch.kernels, arch.expands)])
    assert (phone / "devices" / "phone.toml").is_file()
    manifest = json.loads((phone / "latency_tables" / "phone" / "tflite-fp32.json.manifest.json").read_text())
    assert set(manifest["inputs"]) == {"table_176", "table_192"}


def test_search_runs_on_the_imported_device_with_the_imported_predictor(phone, imported, predictor_file, monkeypatch,
                                                                       tmp_path, capsys):
    monkeypatch.chdir(phone)
    argv = ["search", "--supernet", str(imported["1.2"][1]), "--device", "phone", "--max-latency-ms", "25",
            "--predictor", str(predictor_file), "--no-verify", "--generations", "20", "--population", "30",
            "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    best = result["top"][0]
    assert best["arch"]["resolution"] in (176, 192)  # the resolutions both the predictor and the tables know
    assert best["predicted"]["latency_ms"] <= 25


def test_tables_that_are_not_once_for_alls_are_refused(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    assert "not plain YAML" in _refused(capsys, "import", "ofa-lut", str(tmp_path / "a.yaml"), "--device", "x")
    (tmp_path / "b.yaml").write_text("Conv-input:160x160x3-output:80x80x24: {mean: fast}\n")
    assert "has no mean latency" in _refused(capsys, "import", "ofa-lut", str(tmp_path / "b.yaml"), "--device", "x")
    (tmp_path / "c.yaml").write_text("Conv-input:160x160x3-output:80x80x24: {mean: 0.5}\n")
    assert "lacks 'expanded_conv-input:80x80x24" in _refused(capsys, "import", "ofa-lut", str(tmp_path / "c.yaml"),
                                                            "--device", "x")


def test_a_calibration_transferred_from_the_imported_phone_covers_its_resolutions(phone, imported, monkeypatch,
                                                                                  tmp_path):
    """`edgenas calibrate --transfer-from phone` narrows the supernet's 25 resolutions to the table's (checked
    before any device is touched; the measuring itself is the calibration's own tests' business)."""
    from edgenas.cli import build_parser
    from edgenas.cli.latency import _setup

    monkeypatch.chdir(phone)
    args = build_parser().parse_args(["calibrate", "--device", "local", "--supernet", str(imported["1.2"][1]),
                                      "--transfer-from", "phone", "--budget", "10", "--store",
                                      str(tmp_path / "store.sqlite")])
    device, space, store, sources = _setup(args)
    with device, store:
        assert space.resolutions == (176, 192) and space.name == "mobilenetv3-w1.2" and sources == ["phone"]
