"""The cache folder on disk: aliases, the Triton pods' completeness check, and clean-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchline.cli import main
from model_repo_builder.cache import CacheError, check_complete, link_alias, remove_aliases


def _fake_build(root: Path, key: str) -> Path:
    folder = root / key
    (folder / "repository" / "m").mkdir(parents=True)
    (folder / "repository" / "m" / "config.pbtxt").write_text("name: 'm'")
    report = {"key": key, "repository": {"files": {"m/config.pbtxt": "h"}}}
    (folder / "build-report.json").write_text(json.dumps(report))
    return folder


def test_an_alias_points_at_the_build_and_can_be_moved(tmp_path: Path) -> None:
    _fake_build(tmp_path, "c1")
    _fake_build(tmp_path, "c2")
    link_alias(tmp_path, "spec1", "c1")
    assert check_complete(tmp_path / "spec1")["key"] == "c1"
    link_alias(tmp_path, "spec1", "c2")
    assert check_complete(tmp_path / "spec1")["key"] == "c2"
    with pytest.raises(CacheError, match="not an alias"):
        link_alias(tmp_path, "c1", "c2")


def test_check_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _fake_build(tmp_path, "c1")
    (folder / "repository" / "m" / "config.pbtxt").unlink()
    log = tmp_path / "termination-log"
    assert main(["cache", "check", str(folder), f"--termination-log={log}"]) == 1
    assert "incomplete" in log.read_text() and "m/config.pbtxt" in log.read_text()
    assert main(["cache", "check", str(tmp_path / "absent")]) == 1
    assert "no finished build" in capsys.readouterr().err


def test_gc_removes_aliases_and_only_builds_nothing_else_uses(tmp_path: Path) -> None:
    _fake_build(tmp_path, "c1")
    _fake_build(tmp_path, "c2")
    _fake_build(tmp_path, "by-hand")
    link_alias(tmp_path, "a", "c1")
    link_alias(tmp_path, "b", "c1")
    link_alias(tmp_path, "c", "c2")
    assert sorted(remove_aliases(tmp_path, ["a", "c"])) == ["a", "c", "c2"]
    assert (tmp_path / "c1").is_dir() and (tmp_path / "b").is_symlink()  # b still uses c1
    assert (tmp_path / "by-hand").is_dir()
    assert main(["cache", "gc", str(tmp_path), "b"]) == 0
    assert not (tmp_path / "c1").exists()
