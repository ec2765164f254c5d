"""The Dockerfiles, checked without a Docker engine: pinned bases, a non-root user that matches the
chart, every COPY source present in the repository and in the build context, every command the
image runs defined by this project."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from batchline.cli import SUBCOMMAND_MODULES
from tests.chart.chart import REPO, container, one, render

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VENV_BIN = "/opt/batchline/bin/"
PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, enough for this project's: the last pattern that matches the path
    or one of its parent folders decides, and a "!" pattern re-includes."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, pattern) for prefix in prefixes):
            result = not negate
    return result


def ignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name} keeps the venv and caches out of the build context"
    return [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def check_batchline_command(argv: list[str]) -> None:
    """`batchline SUBCOMMAND ...` must name this project's console script and a registered subcommand."""
    assert argv[0] in PYPROJECT["project"]["scripts"], argv
    assert argv[1] in SUBCOMMAND_MODULES, argv
    module = SUBCOMMAND_MODULES[argv[1]]
    if importlib.util.find_spec(module.rpartition(".")[0]) is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"`batchline {argv[1]}` is registered but {module} is not written yet")


@pytest.fixture(params=DOCKERFILES, ids=[d.stem for d in DOCKERFILES])
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_both_images_exist() -> None:
    assert {d.stem for d in DOCKERFILES} == {"operator", "builder"}


def test_base_images_are_pinned(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    stages = {ins.args.split()[-1] for ins in instructions if ins.keyword == "FROM" and " AS " in ins.args.upper()}
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            assert image in stages or (PINNED.match(image) and (":" in image or "@" in image)), image


def test_runs_as_the_non_root_user_the_chart_expects(dockerfile: Path) -> None:
    users = [ins.args for ins in final_stage(parse(dockerfile)) if ins.keyword == "USER"]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    pod = one(render(), "StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) and int(uid) != 0


def test_copy_sources_exist_and_are_in_the_context(dockerfile: Path) -> None:
    patterns = ignore_patterns(dockerfile)
    copies = [ins.args.split() for ins in parse(dockerfile) if ins.keyword in ("COPY", "ADD")]
    local = [c for c in copies if not any(a.startswith("--from=") for a in c)]
    assert local
    for args in local:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
            assert not excluded(src, patterns), f"{dockerfile.name}: COPY {src}: excluded by the .dockerignore"
    assert excluded(".venv/bin/python", patterns) and excluded("tests/conftest.py", patterns)
    assert excluded("operator/batchline/__pycache__/api.cpython-311.pyc", patterns)


def test_run_commands_use_what_the_project_defines(dockerfile: Path) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for ins in parse(dockerfile):
        if ins.keyword != "RUN":
            continue
        for step in re.split(r"&&|;", ins.args):
            words = step.replace("'", "").split()
            if not words or not words[0].startswith(VENV_BIN):
                continue
            tool = words[0].removeprefix(VENV_BIN)
            if tool == "pip":
                for target in words[2:]:
                    assert target.startswith("."), target  # only this project, never an unpinned extra package
                    assert set(re.findall(r"\[([\w,-]+)\]", target)[0].split(",") if "[" in target else []) <= extras
            else:
                check_batchline_command([tool, *words[1:]])


def test_entrypoint_is_a_batchline_subcommand(dockerfile: Path) -> None:
    stage = final_stage(parse(dockerfile))
    [entrypoint] = [exec_form(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i.args) for i in stage if i.keyword == "CMD"]
    check_batchline_command(entrypoint + (cmd[0] if cmd else []))


def test_chart_runs_the_operator_image_entrypoint() -> None:
    stage = final_stage(parse(DOCKER / "operator.Dockerfile"))
    [entrypoint] = [exec_form(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    [cmd] = [exec_form(i.args) for i in stage if i.keyword == "CMD"]
    c = container(render())
    assert c["command"] == entrypoint and c["args"][0] == cmd[0]
