"""The Dockerfiles, checked without a Docker engine: pinned bases, a non-root user that matches the
chart, every COPY source present in the repository and in the build context, every command the
image runs defined by this project."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from batchline.config import OperatorConfig
from batchline.resources.serving import deployment
from tests.chart.chart import REPO, container, env, one, render
from tests.crd_schema import llmd

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# `batchline SUBCOMMAND` -> the module that registers it (the batchline.commands entry points).
SUBCOMMAND_MODULES: dict[str, str] = PYPROJECT["project"]["entry-points"]["batchline.commands"]
# pip options an image's install may use: none of them adds a package.
PIP_OPTIONS = {"--no-deps"}
VENV_BIN = "/opt/batchline/bin/"
PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")
# NVIDIA's NGC releases are named yy.mm (a monthly release, never re-tagged): the Triton image's base.
NGC_RELEASE = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3(@sha256:[0-9a-f]{64})?$")
# The image Triton pods run: NVIDIA's entrypoint is tritonserver, not a batchline subcommand.
TRITON_DOCKERFILE = DOCKER / "triton.Dockerfile"


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


def test_the_four_images_exist() -> None:
    assert {d.stem for d in DOCKERFILES} == {"operator", "builder", "checker", "triton"}


def test_base_images_are_pinned(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    stages = {ins.args.split()[-1] for ins in instructions if ins.keyword == "FROM" and " AS " in ins.args.upper()}
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            pinned = PINNED.match(image) and (":" in image or "@" in image)
            assert image in stages or pinned or NGC_RELEASE.match(image), image


def test_runs_as_the_non_root_user_the_chart_expects(dockerfile: Path) -> None:
    users = [ins.args for ins in final_stage(parse(dockerfile)) if ins.keyword == "USER"]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    pod = one(render(), "StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    if dockerfile == TRITON_DOCKERFILE:  # the user the operator's Triton pods run as
        pod = deployment(llmd(), 1, OperatorConfig(), "k1")["spec"]["template"]["spec"]["securityContext"]
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
                    if target.startswith("--"):
                        assert target in PIP_OPTIONS, target
                        continue
                    assert target.startswith("."), target  # only this project, never an unpinned extra package
                    assert set(re.findall(r"\[([\w,-]+)\]", target)[0].split(",") if "[" in target else []) <= extras
            else:
                check_batchline_command([tool, *words[1:]])


def test_entrypoint_is_a_batchline_subcommand(dockerfile: Path) -> None:
    if dockerfile == TRITON_DOCKERFILE:
        pytest.skip("the Triton image runs tritonserver (test_triton_image_serves_what_the_operator_runs)")
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


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    steps = [step.replace("'", "").split() for ins in parse(dockerfile) if ins.keyword == "RUN"
             for step in re.split(r"&&|;", ins.args)]
    return [words[2:] for words in steps if words[:2] == [f"{VENV_BIN}pip", "install"]]


def test_checker_image_is_the_project_without_dependencies() -> None:
    """No torch, no kopf: `pip install --no-deps .`, no extras, and its entrypoint runs `batchline cache`."""
    assert _pip_installs(DOCKER / "checker.Dockerfile") == [["--no-deps", "."]]
    stage = final_stage(parse(DOCKER / "checker.Dockerfile"))
    [entrypoint] = [exec_form(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    [cmd] = [exec_form(i.args) for i in stage if i.keyword == "CMD"]
    assert entrypoint == ["batchline"] and cmd[0] == "cache"


def _run_without_dependencies(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`batchline ARGV` as the checker image runs it: this project's modules and its entry points, and
    nothing outside the standard library (no site-packages at all: python -S)."""
    dist = tmp_path / "site" / "batchline-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: batchline\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[batchline.commands]\n" + "".join(f"{k} = {v}\n" for k, v in SUBCOMMAND_MODULES.items()))
    code = (
        "import sys\n"
        "from batchline.cli import main\n"
        f"rc = main({argv!r})\n"
        "outside = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "print('OUTSIDE', sorted(outside - {'__main__', 'batchline', 'model_repo_builder'}))\n"
        "sys.exit(rc)\n"
    )
    return _isolated(tmp_path, code)


def _isolated(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    path = f"{tmp_path / 'site'}:{REPO / 'operator'}:{REPO}"
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"})


def test_cache_commands_run_on_the_standard_library_alone(tmp_path: Path) -> None:
    """What the checker image runs needs none of the project's dependencies (torch least of all)."""
    cache = tmp_path / "cache"
    (cache / "k1").mkdir(parents=True)
    check = _run_without_dependencies(tmp_path, ["cache", "check", str(cache / "k1")])
    assert check.returncode == 1 and "holds no finished build" in check.stderr, check.stderr
    assert "OUTSIDE []" in check.stdout, check.stdout
    gc = _run_without_dependencies(tmp_path, ["cache", "gc", str(cache), "k1"])
    assert gc.returncode == 0 and "OUTSIDE []" in gc.stdout, gc.stdout + gc.stderr
    # The harness has no dependency to fall back on: the operator's own modules fail to import there.
    operator = _isolated(tmp_path, "import batchline.controller.handlers")
    assert operator.returncode != 0 and "ModuleNotFoundError" in operator.stderr, operator.stderr


def test_a_builder_image_bump_leaves_every_triton_pod_as_it_is() -> None:
    """What `helm upgrade --set builder.image=...` changes for the operator, and that no Triton pod uses it."""
    def config(sets: tuple[str, ...]) -> OperatorConfig:
        values = render(sets=sets)
        return OperatorConfig.from_env({k: v for k, v in env(values).items() if isinstance(v, str)})

    before, after = config(()), config(("builder.image=ghcr.io/batchline/batchline-builder:9.9.9",))
    assert after.builder_image != before.builder_image
    obj = llmd()
    assert deployment(obj, 2, after, "k1") == deployment(obj, 2, before, "k1")
    # The checker's default tag is pinned in values.yaml, not derived from the chart's or the builder's.
    assert before.checker_image == OperatorConfig().checker_image
    assert config(("image.tag=9.9.9",)).checker_image == before.checker_image
    [init] = deployment(obj, 2, before, "k1")["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == before.checker_image and init["command"] == ["batchline"] and init["args"][0] == "cache"


def test_triton_image_serves_what_the_operator_runs() -> None:
    """docker/triton.Dockerfile is the operator's and the chart's default python image, runs the command the
    Triton Deployment gives, and installs the builder extra, whose transformers has continuous batching."""
    stage = final_stage(parse(TRITON_DOCKERFILE))
    [entrypoint] = [exec_form(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    pod = deployment(llmd(), 1, OperatorConfig(), "k1")["spec"]["template"]["spec"]
    [triton] = [c for c in pod["containers"] if c["name"] == "triton"]
    assert triton["command"] == entrypoint == ["tritonserver"]
    built = "ghcr.io/batchline/batchline-triton:0.1.0"
    assert f"-t batchline-triton:{built.rpartition(':')[2]}" in TRITON_DOCKERFILE.read_text()
    assert triton["image"] == OperatorConfig().python_image == built
    values = render()
    assert OperatorConfig.from_env({k: v for k, v in env(values).items() if isinstance(v, str)}).python_image == built
    assert _pip_installs(TRITON_DOCKERFILE) == [[".[builder]"]]
    [pin] = [d for d in PYPROJECT["project"]["optional-dependencies"]["builder"] if d.startswith("transformers")]
    assert re.fullmatch(r"transformers>=5\.(1[7-9]|[2-9]\d),<6", pin), pin
    # The stub's interpreter is the image's Python: the venv's packages come in through PYTHONPATH.
    [pythonpath] = [i.args for i in stage if i.keyword == "ENV" and "PYTHONPATH=" in i.args]
    assert "PYTHONPATH=/opt/batchline/lib/python3." in pythonpath
