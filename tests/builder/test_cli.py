"""`batchline build` and `batchline serve` through the top-level CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchline.cli import main


@pytest.mark.torch
def test_build_command_writes_a_repository_and_reuses_it(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["build", str(tiny_llama), str(tmp_path), "--mode", "int8-weight-only", "--model-name", "tiny"]
    args += ["--max-batch-size", "4", "--preferred-batch-size", "2", "--min-top1-agreement", "0"]
    args += ["--max-perplexity-increase", "1", "--sparsity", "0.25", "--dequantize-at-load"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not summary["reused"] and Path(summary["repository"], "tiny", "config.pbtxt").is_file()
    config = Path(summary["repository"], "tiny", "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "preferred_batch_size: [ 2 ]" in config
    assert '"dequantize_at_load"' in config
    report = json.loads(Path(summary["path"], "build-report.json").read_text())
    assert report["options"]["sparsity"] == 0.25 and report["pruning"]["served_zero_fraction"] >= 0.25
    log = tmp_path / "termination-log"
    assert main([*args, "--alias", "spec-key", f"--termination-log={log}"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    message = json.loads(log.read_text())  # what the operator reads from the builder pod
    assert message["reused"] and message["alias"] == "spec-key" and message["key"] == summary["key"]
    assert message["compressionRatio"] > 1 and "top1Agreement" in message["quality"]
    assert (tmp_path / "spec-key" / "repository" / "tiny" / "config.pbtxt").is_file()


@pytest.mark.torch
def test_build_command_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    assert main(["build", str(tmp_path / "missing"), str(tmp_path / "out"), f"--termination-log={log}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert "does not exist" in log.read_text()  # the builder pod's termination message: status shows it
    assert main(["build", str(tmp_path), str(tmp_path / "out"), "--group-size", "48"]) == 2
    assert "group_size" in capsys.readouterr().err


def test_serve_command_refuses_a_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no such repository" in capsys.readouterr().err


@pytest.mark.triton
@pytest.mark.torch
def test_serve_command_runs_triton_until_terminated(served_llama) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    command = [sys.executable, "-m", "batchline.cli", "serve", str(served_llama.path)]
    command += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("triton ready: http "), line
        http = line.split()[3].rstrip(",")
        with urllib.request.urlopen(f"http://{http}/v2/models/llama/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
