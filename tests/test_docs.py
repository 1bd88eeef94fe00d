"""README.md and docs/ stay true: the README is short and in the user's order, docs/cli.md is what the parsers say,
every command block either runs in a test or says what it needs, and the examples run."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMMAND = re.compile(r"^\s*(edgenas|python3?|bash|torchrun|curl|pip|sudo|ssh-copy-id|for) ")
# A block of commands is preceded by one of: a marker some test reads (it runs the block), `covered-by: PATH, ...` (the
# test files that run the same commands), `needs-*: why` (a device, GPUs, the network), or `output` (not commands).
MARKER = re.compile(r"<!-- ([a-z0-9-]+)(?::\s*(.*?))? -->")
TESTS_TEXT = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py")


def _blocks(text: str) -> list[tuple[list[str], list[str]]]:
    """Each fenced shell block's lines, with the marker comments in the few lines before it."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if lines[i].strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            before = "\n".join(lines[max(0, i - 3):i])
            if lines[i].strip()[3:] in ("", "bash", "sh", "console"):  # shell, not python, TOML or C++
                out.append((lines[i + 1:j], MARKER.findall(before)))
            i = j + 1
        else:
            i += 1
    return out


def test_readme_is_short_and_in_the_users_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 350
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["Install and run the demo", "Your own images", "Your devices", "Deploy the file", "Where next"]
    intro = text.split("\n## ", 1)[0].strip().splitlines()[2:]  # after the title
    assert len(intro) <= 5
    for client in ("MediaPipe", "LiteRT", "TFLite Micro"):
        assert f"({client})" in text
    for doc in ("cli.md", "benchmarks.md", "glossary.md", "decisions.md"):
        assert f"(docs/{doc})" in text and (ROOT / "docs" / doc).is_file()


def test_every_command_runs_in_a_test_or_says_what_it_needs():
    unmarked = []
    for path in [README, *DOCS]:
        if path.name == "cli.md":  # --help texts, not commands
            continue
        for lines, markers in _blocks(path.read_text()):
            if not any(COMMAND.match(line) for line in lines):
                continue
            ok = False
            for name, detail in markers:
                if name == "covered-by":
                    ok = ok or all((ROOT / f.strip()).is_file() for f in detail.split(","))
                elif name.startswith("needs-") and detail or name == "output":
                    ok = True
                elif f"<!-- {name} -->" in TESTS_TEXT or f'"{name}"' in TESTS_TEXT:
                    ok = True
            if not ok:
                unmarked.append(f"{path.relative_to(ROOT)}: {lines[0] if lines else ''}")
    assert not unmarked, "command blocks no test runs and no marker explains:\n" + "\n".join(unmarked)


def test_cli_reference_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "cli_docs.py"), "--check"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_python_api_example_runs():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ArchStats(params=" in done.stdout


def test_readme_run_config_is_the_example():
    """The config the README shows is examples/my-images.toml, key for key."""
    import tomllib

    text = README.read_text()
    shown = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    assert tomllib.loads(shown) == tomllib.loads((ROOT / "examples" / "my-images.toml").read_text())
