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
    args += ["--max-perplexity-increase", "1", "--sparsity", "0.25", "--engine", "static"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not summary["reused"] and Path(summary["repository"], "tiny", "config.pbtxt").is_file()
    config = Path(summary["repository"], "tiny", "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "preferred_batch_size: [ 2 ]" in config
    assert "dequantize_at_load" not in config
    report = json.loads(Path(summary["path"], "build-report.json").read_text())
    assert report["options"]["sparsity"] == 0.25 and report["pruning"]["served_zero_fraction"] >= 0.25
    log = tmp_path / "termination-log"
    assert main([*args, "--alias", "spec-key", f"--termination-log={log}"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    message = json.loads(log.read_text())  # what the operator reads from the builder pod
    assert message["reused"] and message["alias"] == "spec-key" and message["key"] == summary["key"]
    assert message["compressionRatio"] > 1 and "top1Agreement" in message["quality"]
    assert (tmp_path / "spec-key" / "repository" / "tiny" / "config.pbtxt").is_file()


def test_build_flags_choose_the_engine_and_its_kv_cache() -> None:
    import argparse

    from model_repo_builder.cli import options_from_args, register
    from model_repo_builder.options import Engine

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    default = options_from_args(parser.parse_args(["build", "src", "out"]))
    assert default.engine is Engine.INFLIGHT and default.kv_cache_tokens == 8192
    chosen = parser.parse_args(["build", "src", "out", "--kv-cache-tokens", "2048", "--max-batch-tokens", "128"])
    assert (options_from_args(chosen).kv_cache_tokens, options_from_args(chosen).max_batch_tokens) == (2048, 128)
    static = parser.parse_args(["build", "src", "out", "--engine", "static"])
    assert options_from_args(static).engine is Engine.STATIC


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


def test_the_operators_builder_args_choose_the_engine_and_cel_refuses_what_cannot_run() -> None:
    """spec.serving.engine / kvCacheTokens: the operator's build Job args parse in this CLI into the
    options they name, change the build key only when set, and the CRD refuses them where they
    cannot apply (the two rules evaluated here by translation; the API server runs them all)."""
    import argparse
    import re
    from typing import Any

    from batchline.build.spec_key import repository_key
    from batchline.resources.build_job import builder_args
    from model_repo_builder.cli import options_from_args, register
    from model_repo_builder.options import Engine
    from tests.crd_schema import defaulted, llmd, schema

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def options(**serving: Any) -> Any:
        args = builder_args(llmd(serving=serving)["spec"], "k", "/ckpt")
        return options_from_args(parser.parse_args(args))

    assert (options().engine, options().kv_cache_tokens) == (Engine.INFLIGHT, 8192)
    assert options(kvCacheTokens=4096).kv_cache_tokens == 4096
    assert options(engine="static").engine is Engine.STATIC
    keys = {
        repository_key(llmd(serving=serving)["spec"]) for serving in ({}, {"engine": "static"}, {"kvCacheTokens": 4096})
    }
    assert len(keys) == 3

    rules = [
        rule
        for rule in schema()["properties"]["spec"]["x-kubernetes-validations"]
        if "serving.engine" in rule["rule"] or "serving.kvCacheTokens" in rule["rule"]
    ]
    assert len(rules) == 2

    def violations(**spec: Any) -> list[str]:
        full = defaulted({"model": {"source": "hf://org/model"}, **spec})
        serving, task = full["serving"], full["model"]["task"]
        found = []
        for rule in rules:
            text = re.sub(r"has\(self\.serving\.(\w+)\)", r"('\1' in serving)", rule["rule"])
            text = text.replace("self.serving.", "serving_").replace("self.model.task", "task")
            text = re.sub(r"serving_(\w+)", r"serving['\1']", text)
            text = re.sub(r"!(?!=)", " not ", text.replace("||", " or ").replace("&&", " and "))
            if not eval(text, {"__builtins__": {}}, {"serving": serving, "task": task}):
                found.append(rule["message"])
        return found

    assert violations() == [] and violations(serving={"engine": "static"}) == []
    assert violations(serving={"engine": "inflight", "kvCacheTokens": 2048}) == []
    [vllm] = violations(serving={"backend": "vllm", "engine": "inflight"}, resources={"gpu": {"count": 1}})
    assert vllm.startswith("spec.serving.engine")
    [embeddings] = violations(model={"source": "hf://org/m", "task": "embeddings"}, serving={"engine": "static"})
    assert "embeddings" in embeddings
    [static_cache] = violations(serving={"engine": "static", "kvCacheTokens": 2048})
    assert static_cache.startswith("spec.serving.kvCacheTokens")
