"""The operator image installs `pip install .`: the operator and the builder, and none of the dev tooling."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_plain_install_ships_the_operator_and_no_dev_tooling(tmp_path: Path) -> None:
    # The whole checkout, as `COPY . .` would take it (the build writes its scratch folder beside the sources).
    source = tmp_path / "src"
    scratch = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__")
    shutil.copytree(REPO, source, ignore=lambda folder, names: [*scratch(folder, names), *(
        ["build"] if Path(folder) == REPO else []
    )])
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("batchline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "batchline/controller/handlers.py" in names and "model_repo_builder/cli.py" in names
    assert not [n for n in names if n.startswith(("devcluster/", "batchline_tools/"))]
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # -S: no site-packages processing, so this checkout's editable installs (dev tooling included) are not on
    # the path; the operator's dependencies come from the environment's site-packages as plain folders.
    probe = (
        "import importlib.util, sys; import batchline.controller.handlers, batchline.cli; "
        "assert batchline.__file__.startswith(sys.argv[1]), batchline.__file__; "
        "print([m for m in ('devcluster', 'batchline_tools') if importlib.util.find_spec(m)])"
    )
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}", "KUBECONFIG": "/dev/null"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
