"""`edgenas export --board NAME --patches N` (issue 44): the patch-based int8 file beside the whole one, checked
bit-identical in TFLite Micro, and the board's C files and card section, from the command line."""

from __future__ import annotations

import json

import pytest

from edgenas.cli import main
from tests.cli.test_export import ARCH, checkpoint  # noqa: F401  (the module's tiny supernet fixture)


def test_export_for_a_board_with_patches(checkpoint, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("tflite_micro")
    out = tmp_path / "ship"
    code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--formats", "tflite-int8", "--out",
                 str(out), "--board", "stm32f746", "--patches", "2", "--no-verify", "--calibration-images", "8",
                 "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"], result
    mcu = result["mcu"]
    assert mcu["patches"]["patches"] == 2 and mcu["patches"]["bit_identical"] is True
    assert abs(mcu["patches"]["arena_bytes"] / mcu["patches"]["measured_arena_bytes"] - 1) < 0.10
    assert mcu["shipped"].endswith("model_int8_patches2.tflite")
    header = (out / "board" / "model_data.h").read_text()
    assert f"kTensorArenaSize = {mcu['board_files']['arena_bytes']};" in header
    assert "alignas(16) const unsigned char g_model_data[]" in (out / "board" / "model_data.cc").read_text()
    assert "AddStridedSlice()" in (out / "board" / "model_ops.h").read_text()
    card = (out / "card.md").read_text()
    assert card.count("<!-- edgenas:mcu begin") == 1 and "stm32f746" in card


def test_bad_patches_and_board_are_one_line_and_status_2(checkpoint, tmp_path, capsys):  # noqa: F811
    for flags, says in ((["--patches", "1"], "--patches '1'"), (["--board", "nosuch"], "unknown board 'nosuch'")):
        code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--out", str(tmp_path / "x"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0]
