"""The README cannot rot: every `vsrq` command it shows parses with the real CLI, every subcommand's
--help runs, every `vsrq.<name>` its Python examples call exists with the keywords they pass, and the
scripts and files it names exist."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

import vsrq
from vsrq.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """Each `vsrq ...` line of the bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("vsrq "):
                out.append(line)
    return out


def test_the_readme_is_a_guide_of_at_most_250_lines():
    assert len(README.splitlines()) <= 250
    assert len(commands()) >= 15


@pytest.mark.parametrize("line", commands())
def test_every_readme_command_parses(line: str):
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


def test_every_subcommand_help_runs(capsys: pytest.CaptureFixture):
    names = {shlex.split(line)[1] for line in commands()}
    for name in sorted(names):
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert "usage: vsrq " + name in capsys.readouterr().out


def test_python_examples_call_what_exists_with_the_keywords_they_pass():
    import inspect

    calls = 0
    for block in blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "vsrq":
                fn = getattr(vsrq, node.func.attr)  # AttributeError: the README calls what vsrq lacks
                params = inspect.signature(fn).parameters
                assert all(k.arg in params for k in node.keywords if k.arg), (node.func.attr, params)
                calls += 1
    assert calls >= 8


def test_files_and_scripts_the_readme_names_exist():
    for path in re.findall(r"\]\(([^)#]+\.md)\)", README) + re.findall(r"`(scripts/[\w.]+\.sh|bench/\w+\.py)`", README):
        assert (ROOT / path).exists(), path
