#!/usr/bin/env python3
"""Serve a Triton model repository on this machine with the `tritonserver` binary of the nvidia-pytriton wheel.

That wheel ships a real Triton Inference Server (with the Python backend, not the onnxruntime one), so a
repository written with `slidefuse triton BUNDLE --out REPO --runtime python --kind cpu` runs here without a
container. The server lives in its own environment (`make triton-server` makes `.cache/triton-server`:
nvidia-pytriton, onnxruntime and numpy < 2, which PyTriton's Python-backend stub needs), separate from the
slidefuse client environment.

    python tools/triton_local.py REPO [--grpc-port 8001]      # serves until Ctrl-C

Tests and benchmarks import `start_server` / `stop_server`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "SLIDEFUSE_TRITON_SERVER_ENV"  # overrides the server environment's folder
DEFAULT_ENV = ROOT / ".cache" / "triton-server"


@dataclass
class LocalServer:
    """A running tritonserver process."""

    process: subprocess.Popen[bytes]
    url: str  # gRPC HOST:PORT
    log_path: Path  # its stdout + stderr
    backends: Path  # the temporary backend folder (removed by stop_server)


def server_env() -> Path:
    """The server environment's folder ($SLIDEFUSE_TRITON_SERVER_ENV or .cache/triton-server)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ENV)


def pytriton_dir(env: Path) -> Path | None:
    """The `pytriton` package folder of `env`, or None when nvidia-pytriton is not installed there."""
    found = sorted(env.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    return found[0].parents[2] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend_dir(pkg: Path) -> Path:
    """A backend folder with the Python backend and the stub for the environment's Python (copied, as PyTriton
    does: the stub finds its libraries relative to its own path)."""
    py = pkg.parent.parent.name.removeprefix("python")  # .../lib/python3.11/site-packages/pytriton
    folder = Path(tempfile.mkdtemp(prefix="slidefuse-triton-backends-"))
    (folder / "python").mkdir()
    for f in (pkg / "tritonserver" / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy(f, folder / "python" / f.name)
    shutil.copy(pkg / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub", folder / "python")
    return folder


def start_server(repo: Path, grpc_port: int | None = None, timeout_s: float = 120.0) -> LocalServer:
    """Start tritonserver on `repo` (gRPC on `grpc_port`, default a free one; HTTP and metrics off) and wait until
    it is ready. Raises RuntimeError with the end of its log when it exits or is not ready in time."""
    env_dir = server_env()
    pkg = pytriton_dir(env_dir)
    if pkg is None:
        raise RuntimeError(f"no nvidia-pytriton in {env_dir}; run 'make triton-server' (or set {ENV_VAR})")
    backends = _backend_dir(pkg)
    port = grpc_port or free_port()
    env = dict(os.environ)
    env["PATH"] = f"{env_dir / 'bin'}:{env.get('PATH', '')}"  # the stub's Python finds its prefix on PATH
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(pkg.parent / "nvidia_pytriton.libs"),
                                                    env.get("LD_LIBRARY_PATH")]))
    log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
    cmd = [str(pkg / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repo}",
           f"--backend-directory={backends}", f"--grpc-port={port}", "--allow-http=false",
           "--allow-metrics=false", "--log-verbose=0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LocalServer(proc, f"localhost:{port}", log_path, backends)
    _wait_ready(server, timeout_s)
    return server


def _wait_ready(server: LocalServer, timeout_s: float) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            try:
                if client.is_server_ready(client_timeout=2):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
    finally:
        client.close()
    tail = server.log_path.read_text(errors="replace")[-3000:]
    stop_server(server)
    raise RuntimeError(f"tritonserver did not become ready (exit {server.process.returncode}):\n{tail}")


def stop_server(server: LocalServer) -> None:
    """Stop the server (SIGTERM to its process group, then SIGKILL) and remove its backend folder."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    shutil.rmtree(server.backends, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="model repository (slidefuse triton ... --out REPO)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # also when started in the background, where SIGINT is ignored
    signal.signal(signal.SIGTERM, interrupt)
    server = start_server(args.repo.resolve(), args.grpc_port)
    print(f"tritonserver ready: gRPC {server.url} (log {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
