"""The `coralbay ...` commands the documentation shows are commands the parser accepts, and every
command the docs list has `--help` on a plain install (issue 21, docs that disagreed).

Why parse and not run: most documented commands need a model, a scan or minutes; what went wrong
was syntax (`--point -42.5,...` needs `--point=` for argparse) and a command whose `--help` failed.
The real parser (`coralbay.cli.build_parser`, with every option's type check) sees each command
line exactly as a shell would split it; synopsis lines (with `[...]`, `|` or `...`) are skipped.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENGINE_DIR, REPO
from coralbay.cli import build_parser

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def code_lines(markdown: str) -> list[str]:
    """Lines of fenced and indented code blocks, with backslash continuations joined."""
    blocks = FENCE.findall(markdown)
    blocks.append("\n".join(line for line in FENCE.sub("", markdown).splitlines() if line.startswith("    ")))
    joined = []
    for block in blocks:
        joined += re.sub(r"\\\n\s*", " ", block).splitlines()
    return [line.strip() for line in joined]


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text(encoding="utf-8")):
            line = re.sub(r"^(\$ |\.venv/bin/|PYTHONPATH=\S+ )+", "", line.split("  #")[0]).strip()
            if not line.startswith("coralbay ") or re.search(r"\[|\||\.\.\.|<[A-Z]", line):
                continue  # not a command, or a synopsis with placeholders for optional parts
            found.append((page.name, line))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10 and any(line.startswith("coralbay classify") for _, line in COMMANDS)


@pytest.mark.parametrize("page,line", COMMANDS, ids=[f"{p}:{line[:60]}" for p, line in COMMANDS])
def test_a_documented_command_parses(page, line, capsys):
    words = shlex.split(line)[1:]
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{line}` is refused by the parser ({capsys.readouterr().err.strip().splitlines()[-1]})"
                    if exc.code else f"{page}: `{line}` exits while parsing")
    assert getattr(args, "run", None) is not None, f"{page}: `{line}` names no command"


def listed_commands() -> list[str]:
    """The commands of docs/cli.md's table, which promises `--help` for every one."""
    table = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    names = []
    for cell in re.findall(r"^\| `coralbay ([^`]+)`", table, re.MULTILINE):
        for part in re.split(r"\s*/\s*|`\s*/\s*`", cell):
            name = part.replace("coralbay ", "").split()[0].strip("`")
            if name not in names:
                names.append(name)
    return names


HELP_ALL = """
import json, sys
from coralbay.cli import main
codes = {}
for name in json.loads(sys.argv[1]):
    try:
        codes[name] = main([name, "--help"])  # returns instead of exiting when --help is not an option
    except SystemExit as exc:
        codes[name] = exc.code
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def help_exit_codes(tmp_path_factory) -> dict[str, int]:
    """`coralbay NAME --help` for every listed command, run as a plain install sees it: the engine
    alone on the path (not benchmarks/), from a folder outside the checkout."""
    names = listed_commands()
    result = subprocess.run([sys.executable, "-c", HELP_ALL, json.dumps(names)], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ENGINE_DIR), "OMP_NUM_THREADS": "1"},
                            cwd=tmp_path_factory.mktemp("elsewhere"), timeout=300)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_md_lists_the_commands():
    assert {"info", "segment", "classify", "compare", "export", "batch", "interact", "bench"} <= set(listed_commands())


@pytest.mark.parametrize("name", [n for n in listed_commands() if n != "bench"])
def test_every_listed_command_has_help_on_a_plain_install(name, help_exit_codes):
    assert help_exit_codes[name] == 0


def test_bench_has_help_on_a_plain_install(help_exit_codes):
    assert help_exit_codes["bench"] == 0
