"""The docs match the code: README.md and docs/*.md name only paths, tests, settings,
commands and stages that exist, with the defaults the code has.

Fast (no Spark, no model): it reads the docs and imports the package. What each check
guards:
- a path the README or a docs page names (`bench/x.py`, `docs/x.md`, `tests/x.py`, ...)
  exists in the checkout;
- a test named as `tests/x.py::test_y` (or `x.py::test_y`) exists;
- every row of the README's "Settings" table is a `Settings` field, with that default;
- every `Settings` field is documented in README.md or a docs page;
- every stage of `run/stages.STAGES` is a box of both README diagrams (the first screen's
  and "How one utterance becomes a training row"), in order, and the files they name exist;
- every subcommand and option of the CLI is in the README's "Commands";
- every published folder (schemas of kind `published`) has a row in "What each output holds";
- every `SELFLEARN_*` environment variable the docs name is read somewhere in the code;
- every make target the README names exists.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
# Outputs of a bench run, not part of the checkout (bench/run.py writes them).
GENERATED = ("bench/results/",)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the markdown section `heading` (a whole heading line), up to the next
    heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n") + len(heading) + 1
    nxt = re.compile(r"^#{1,%d} " % level, re.M).search(text, start)
    return text[start:nxt.start() if nxt else len(text)]


def _docs() -> dict[str, str]:
    return {str(p.relative_to(REPO)): _text(p) for p in [README, *DOC_PAGES]}


PATH = re.compile(r"(?<![\w/.$-])((?:bench|docs|tests|deploy|pipelines|schemas|selflearn|\.ci)/[\w./-]*\w)")


def test_every_path_the_docs_name_exists():
    missing = []
    for name, text in _docs().items():
        for m in PATH.finditer(text):
            path = m.group(1)
            if path.startswith(GENERATED) or text[m.end():m.end() + 2].lstrip("/")[:1] in ("<", "*"):
                continue  # a pattern (runs/<run_id>/, *.parquet), not a file
            if not (REPO / path).exists() and not (REPO / (path + ".py")).exists():
                missing.append(f"{name}: {path}")
    assert not missing, "named in the docs but not in the checkout:\n" + "\n".join(missing)


def test_every_test_the_docs_name_exists():
    missing = []
    for name, text in _docs().items():
        text = re.sub(r"::\s*\n\s*", "::", text)  # a name wrapped after its ::
        for m in re.finditer(r"(?:tests/)?(test_\w+)(?:\.py)?::(test_\w+)", text):
            module = REPO / "tests" / f"{m.group(1)}.py"
            if not module.exists() or not re.search(rf"^def {m.group(2)}\b", _text(module), re.M):
                missing.append(f"{name}: {m.group(0)}")
    assert not missing, "tests named in the docs that do not exist:\n" + "\n".join(missing)


def _settings_table() -> list[tuple[str, str]]:
    rows = []
    for line in _section(_text(README), "## Settings").splitlines():
        m = re.match(r"^\| `(\w+)` \| (.*?) \|", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def _same(documented, default) -> bool:
    if isinstance(default, tuple):
        return list(default) == documented
    if isinstance(default, bool) or isinstance(documented, bool):
        return documented is default
    if isinstance(default, (int, float)):
        return isinstance(documented, (int, float)) and float(documented) == float(default)
    return str(documented) == default


def test_every_setting_in_the_readme_table_exists_with_its_default():
    from selflearn.config import Settings

    defaults = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    rows = _settings_table()
    assert len(rows) >= 8, "README 'Settings' has no settings table"
    wrong = []
    for name, cell in rows:
        if name not in fields:
            wrong.append(f"{name}: not a field of selflearn.config.Settings")
            continue
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            continue  # nested weights: documented in config.py
        m = re.fullmatch(r"`([^`]*)`", cell.strip())
        if not m:
            wrong.append(f"{name}: default cell {cell!r} is not one `value`")
            continue
        documented = yaml.safe_load(m.group(1))
        if not _same(documented, default):
            wrong.append(f"{name}: README says {m.group(1)}, Settings() has {default!r}")
    assert not wrong, "README 'Settings' table against the code:\n" + "\n".join(wrong)


def test_every_setting_is_documented_in_the_readme_or_a_docs_page():
    from selflearn.config import Settings

    text = "\n".join(_docs().values())
    missing = [f.name for f in dataclasses.fields(Settings) if f"`{f.name}`" not in text]
    assert not missing, f"Settings fields documented nowhere (README 'Settings' or docs/): {missing}"


def _first_code_block(heading: str) -> str:
    body = _section(_text(README), heading)
    start = body.index("```")
    return body[start:body.index("```", start + 3)]


def _diagram() -> str:
    return _first_code_block("## How one utterance becomes a training row")


def test_every_stage_is_a_box_of_the_readme_diagram_in_order():
    from selflearn.run.stages import STAGE_NAMES

    drawn = re.findall(r"^\s*\| (\w+) ", _diagram(), re.M)
    assert drawn == list(STAGE_NAMES), f"README diagram stages {drawn} != run/stages.py {list(STAGE_NAMES)}"


def _first_diagram() -> str:
    """The stage diagram at the top of the README (in "The two commands", the first screen)."""
    return _first_code_block("## The two commands")


def test_the_first_screen_diagram_has_every_stage_in_order():
    from selflearn.run.stages import STAGE_NAMES

    drawn = re.findall(r"^ \[(\w+)\] ", _first_diagram(), re.M)
    assert drawn == list(STAGE_NAMES), f"README top diagram stages {drawn} != run/stages.py {list(STAGE_NAMES)}"


@pytest.mark.parametrize("diagram", [_diagram, _first_diagram], ids=["full", "first-screen"])
def test_every_file_the_diagram_names_exists(diagram):
    missing = []
    for m in re.finditer(r"(?<![\w/])((?:core|spark|run|encoders|serving)/\w+)(?:\.py|\.(\w+))", diagram()):
        module = REPO / "selflearn" / f"{m.group(1)}.py"
        if not module.exists():
            missing.append(m.group(0))
        elif m.group(2) and not re.search(rf"^(?:def|class) {m.group(2)}\b|^{m.group(2)}\b", _text(module), re.M):
            missing.append(m.group(0))
    assert not missing, f"the README diagram names what the code does not have: {missing}"


def test_every_command_and_option_is_in_the_readme_commands():
    from selflearn.cli import build_parser

    commands = _section(_text(README), "## Commands")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    missing = []
    for name, p in sub.choices.items():
        line = next((ln for ln in commands.splitlines() if ln.strip().startswith(f"selflearn {name} ")), None)
        if line is None:
            missing.append(f"selflearn {name}")
            continue
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and not re.search(rf"{re.escape(opt)}\b", line):
                    missing.append(f"selflearn {name} {opt}")
    assert not missing, f"CLI commands/options missing from README 'Commands': {missing}"


def test_every_published_table_is_in_what_each_output_holds():
    from selflearn.schema import PUBLISHED_TABLES

    body = _section(_text(README), "## What each output holds")
    folders = sorted({t.split("/")[0] for t in PUBLISHED_TABLES})
    missing = [f for f in folders if f"| `{f}/` |" not in body]
    assert not missing, f"published folders without a row in 'What each output holds': {missing}"


def test_every_environment_variable_the_docs_name_is_read_by_the_code():
    code = "\n".join(_text(f) for d in ("selflearn", "pipelines", "deploy", "bench", "tests")
                     for f in (REPO / d).rglob("*") if f.suffix in (".py", ".sh", ".yaml"))
    code += _text(REPO / "Makefile")
    named = {m for t in _docs().values() for m in re.findall(r"\bSELFLEARN_[A-Z_]+\b", t)}
    missing = sorted(named - set(re.findall(r"\bSELFLEARN_[A-Z_]+\b", code)))
    assert not missing, f"environment variables in the docs that no code reads: {missing}"


@pytest.mark.parametrize("target", ["demo", "test", "test-full", "bench", "bench-check"])
def test_make_targets_the_readme_names_exist(target):
    assert f"make {target}" in _text(README)
    assert re.search(rf"^{re.escape(target)}:", _text(REPO / "Makefile"), re.M)
