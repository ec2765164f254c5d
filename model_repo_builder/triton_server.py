"""Runs the tritonserver shipped in the nvidia-pytriton wheel, on CPU, for built repositories.

The recipe: a backend folder holding the wheel's python backend
plus the stub for the running Python; LD_LIBRARY_PATH with the interpreter's LIBDIR first (the stub
must find this libpython, not the system's) and then nvidia_pytriton.libs; PYTHONPATH set to this
environment's site-packages so that model.py can import torch and transformers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from importlib import util
from pathlib import Path
from types import TracebackType

STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


class TritonServerError(RuntimeError):
    """tritonserver is missing, exited early, or did not become ready in time."""


def pytriton_root() -> Path:
    spec = util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("the nvidia-pytriton wheel is not installed (pip install 'batchline[builder]')")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tritonserver_binary() -> Path:
    return pytriton_root() / "bin" / "tritonserver"


def server_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) plus what tritonserver and its python stubs need
    to run models of this interpreter."""
    root = pytriton_root()
    env = dict(os.environ if base is None else base)
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(root.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    paths = [*site.getsitepackages(), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def prepare_backends(folder: Path) -> Path:
    """Copies the python backend and this Python's stub into `folder`; returns the backend directory."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonServerError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    target = folder / "python"
    shutil.copytree(root / "backends" / "python", target, dirs_exist_ok=True)
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return folder


class TritonServer:
    """A tritonserver process on free (or given) ports, ready when `start()` returns.

    Use as a context manager: `with TritonServer([repo]) as server: server.http_url ...`.
    """

    def __init__(
        self,
        repositories: Sequence[str | Path],
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        cache_size_bytes: int = 0,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not repositories:
            raise ValueError("at least one model repository is needed")
        self.repositories = [Path(repo).resolve() for repo in repositories]
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.cache_size_bytes = cache_size_bytes
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def http_url(self) -> str:
        """host:port, the form tritonclient.http expects."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "tritonserver.log" if self._workdir else None

    def command(self, backend_dir: Path) -> list[str]:
        args = [str(tritonserver_binary()), f"--backend-directory={backend_dir}"]
        args += [f"--model-repository={repo}" for repo in self.repositories]
        args += [
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
        ]
        if self.cache_size_bytes:
            args.append(f"--cache-config=local,size={self.cache_size_bytes}")
        return args + self.extra_args

    def start(self) -> TritonServer:
        if self._process is not None:
            raise TritonServerError("the server is already running")
        self._workdir = Path(tempfile.mkdtemp(prefix="batchline-triton-"))
        backend_dir = prepare_backends(self._workdir / "backends")
        log = (self._workdir / "tritonserver.log").open("wb")
        self._process = subprocess.Popen(
            self.command(backend_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            cwd=self._workdir,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with {self._process.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.5)
        raise TritonServerError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGINT (Triton unloads models and exits), then SIGKILL if it hangs; removes the work folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
