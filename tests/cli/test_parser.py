"""The CLI catches typos: no prefix matching on any parser; an unknown flag, subcommand, device, space, preset or
format is one line naming the near valid name, exit status 2, and nothing is run or written."""

from __future__ import annotations

import argparse

import pytest

from edgenas.cli import all_parsers, build_parser, main


def _leaf_parsers() -> list[argparse.ArgumentParser]:
    return [p for p in all_parsers() if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def test_no_parser_matches_prefixes():
    parsers = all_parsers(build_parser())
    assert len(parsers) > 15  # every command and subcommand, walked
    allowing = [p.prog for p in parsers if p.allow_abbrev]
    assert not allowing, f"parsers that read a prefix as a flag: {allowing}"


@pytest.mark.parametrize("parser", _leaf_parsers(), ids=lambda p: p.prog.replace(" ", "-"))
def test_a_prefix_of_a_flag_is_refused_with_the_near_name(parser, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    if not options:
        pytest.skip(f"{parser.prog} has no long options")
    flag = max(options, key=len)
    typo = flag[:-2]  # once read as `flag` by argparse's prefix matching
    with pytest.raises(SystemExit) as exc:
        main([*parser.prog.split()[1:], typo, "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and typo in err
    suggested = err.split("did you mean '", 1)[1].split("'", 1)[0]
    assert suggested in options and suggested.startswith(typo), err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv, bad, near", [
    (["train", "--epochs", "5", "--dataset", "digits"], "--epochs", "--epochs-scale"),
    (["trian"], "trian", "train"),
    (["devices", "chek", "local"], "chek", "check"),
    (["train", "--preset", "tinny"], "tinny", "tiny"),
    (["train", "--space", "tinyy", "--out", "run"], "tinyy", "tiny"),
    (["search", "--supernet", "s.pt", "--device", "lcoal", "--max-latency-ms", "5"], "lcoal", "local"),
    (["export", "--supernet", "s.pt", "--arch", "{}", "--formats", "onnx,tflte", "--out", "out"], "tflte", "tflite"),
])
def test_unknown_names_get_the_near_one_and_nothing_runs(argv, bad, near, tmp_path, monkeypatch, capsys):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "local.toml").write_text('name = "local"\nkind = "local"\n')
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert bad in err and f"did you mean '{near}'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices"]  # nothing written: no run, out or store
