"""`batchline serve REPO`: a real Triton Inference Server on a built repository, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .report import REPOSITORY_DIR
from .triton_server import TritonServer, TritonServerError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a built model repository with tritonserver (CPU, python backend)",
        description="REPO is a build folder (holding repository/) or a Triton model repository.",
    )
    parser.add_argument("repo", nargs="+", help="build folder(s) or model repository folder(s)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument("--cache-size-bytes", type=int, default=0, help="response cache size (0 = off)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.set_defaults(func=run)


def repository_path(path: str) -> Path:
    folder = Path(path)
    return folder / REPOSITORY_DIR if (folder / REPOSITORY_DIR).is_dir() else folder


def run(args: argparse.Namespace) -> int:
    repositories = [repository_path(path) for path in args.repo]
    missing = [str(repo) for repo in repositories if not repo.is_dir()]
    if missing:
        print(f"batchline serve: error: no such repository: {', '.join(missing)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = TritonServer(
        repositories,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        cache_size_bytes=args.cache_size_bytes,
        startup_timeout_s=args.startup_timeout,
    )
    try:
        with server:
            print(f"triton ready: http {server.http_url}, grpc {server.grpc_url}, metrics {server.metrics_url}")
            sys.stdout.flush()
            stop.wait()
    except TritonServerError as exc:
        print(f"batchline serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
