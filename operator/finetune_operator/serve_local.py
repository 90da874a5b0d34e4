"""`finetune serve REPO`: run a local Triton Inference Server over a model repository.

The server binary is found in this order:

1. the ``nvidia-pytriton`` wheel's bundled Triton (``pytriton/tritonserver``), which is prepared in a work
   directory once (the Python-backend stub for this interpreter copied into ``backends/python``);
2. a ``tritonserver`` on ``PATH`` (a Triton container or a system install), used with its own backends.

The server runs with explicit model control and loads every model at start (``--load-model=*``) so that
``python -m finetune_trainer publish --triton-url ...`` can load new versions into it later.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import venv
from dataclasses import dataclass, field
from pathlib import Path

STUB_NUMPY = "numpy==1.26.4"  # what the bundled Python-backend stub was built against


class TritonNotFoundError(RuntimeError):
    """No Triton server binary is installed."""


@dataclass(frozen=True)
class TritonInstall:
    """Where a runnable tritonserver lives and the environment it needs."""

    binary: Path
    backend_dir: Path | None = None
    cache_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def _prepare_pytriton(root: Path, work: Path) -> TritonInstall:
    """Copy the bundled server into ``work`` with the Python-backend stub of this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotFoundError(f"nvidia-pytriton has no Python-backend stub for Python {version} ({stub})")
    server = work / "tritonserver"
    if not (server / "backends" / "python" / "triton_python_backend_stub").exists():
        staging = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=work))
        shutil.copytree(root, staging / "t", symlinks=True)
        shutil.copy2(stub, staging / "t" / "backends" / "python" / "triton_python_backend_stub")
        shutil.rmtree(server, ignore_errors=True)
        os.replace(staging / "t", server)
        shutil.rmtree(staging, ignore_errors=True)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    # The stub embeds Python: it must find this interpreter's libpython (LIBDIR), not the system one.
    ld_path = [p for p in (sysconfig.get_config_var("LIBDIR"), str(libs)) if p]
    if os.environ.get("LD_LIBRARY_PATH"):
        ld_path.append(os.environ["LD_LIBRARY_PATH"])
    env = {
        "LD_LIBRARY_PATH": ":".join(ld_path),
        # Python models run with the interpreter (and packages) of the first python on PATH.
        "PATH": os.pathsep.join([str(_stub_python(work)), os.environ.get("PATH", "")]),
    }
    return TritonInstall(server / "bin" / "tritonserver", server / "backends", server / "caches", env)


def _numpy_major() -> int:
    try:
        return int(importlib.metadata.version("numpy").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def cache_root() -> Path:
    """The per-user folder where `finetune serve` keeps what it prepares once (``$XDG_CACHE_HOME/finetune``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune"


def _installed(requirement: str, dest: Path, why: str) -> Path:
    """``dest`` holding ``pip install --no-deps --target`` of ``requirement``, installed once (atomically: a
    concurrent `finetune serve` that wins the race is as good)."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"finetune serve: installing {requirement} into {dest} ({why}; once)", file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(staging), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise TritonNotFoundError(
            f"cannot install {requirement} ({why}): {done.stderr.strip()[-400:]}; "
            f"run `{' '.join(cmd[:-3])} --target {dest} {requirement}` where PyPI is reachable"
        )
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the packages from a server run as another user
    try:
        os.replace(staging, dest)
    except OSError:  # another process installed it first
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _stub_python(work: Path) -> Path:
    """The bin folder of the Python that the bundled Python-backend stub should run.

    The stub in nvidia-pytriton 0.7 is built against numpy 1.x: with numpy 2 it corrupts string (BYTES)
    tensors, which the text-in tokenizer takes. When this environment has numpy 2, the stub gets a small
    virtualenv whose path puts a numpy 1.x folder (installed once into the per-user cache) before this
    environment's packages.
    """
    here = Path(sys.executable).parent
    if _numpy_major() < 2:
        return here
    numpy1 = _installed(STUB_NUMPY, cache_root() / f"triton-{STUB_NUMPY.replace('==', '-')}",
                        "Triton's bundled Python backend needs numpy<2 for string tensors")
    env_dir = work / "stub-python"
    site_dir = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    if not (env_dir / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env_dir)
    packages = sysconfig.get_path("purelib")
    (site_dir / "00-numpy1.pth").write_text(f"{numpy1.resolve()}\n")
    (site_dir / "10-env.pth").write_text(f"import site; site.addsitedir({packages!r})\n")
    return env_dir / "bin"


def find_tritonserver(work_dir: Path | None = None) -> TritonInstall:
    """Locate a runnable tritonserver (see the module docstring for the search order).

    Args:
        work_dir: where the bundled pytriton server is prepared (default: a per-user cache folder).

    Raises:
        TritonNotFoundError: with install instructions when no server is found.
    """
    root = _pytriton_root()
    if root is not None:
        work = work_dir or cache_root()
        work.mkdir(parents=True, exist_ok=True)
        return _prepare_pytriton(root, work)
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path))
    raise TritonNotFoundError(
        "no Triton Inference Server found: install one with `pip install nvidia-pytriton==0.7.0 --no-deps` "
        "(bundles tritonserver with the Python backend) or run inside a Triton container "
        "(nvcr.io/nvidia/tritonserver) where `tritonserver` is on PATH"
    )


def server_command(
    install: TritonInstall,
    repository: Path | str,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    address: str = "127.0.0.1",
    load_all: bool = True,
    extra: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start tritonserver over ``repository`` with explicit model control."""
    argv = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--model-control-mode=explicit",
        "--exit-on-error=false",
        "--strict-readiness=false",
    ]
    if install.backend_dir is not None:
        argv.append(f"--backend-directory={install.backend_dir}")
    if install.cache_dir is not None:
        argv.append(f"--cache-directory={install.cache_dir}")
    if load_all:
        argv.append("--load-model=*")
    argv += extra or []
    return argv, {**os.environ, **install.env}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `finetune serve`."""
    parser.add_argument("repository", help="model repository: a folder, or s3://bucket/prefix if Triton has S3")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--address", default="127.0.0.1", help="listen address (0.0.0.0 to serve others)")
    parser.add_argument("--no-load", action="store_true", help="start with no model loaded")


def run(args: argparse.Namespace) -> int:
    """Start tritonserver in the foreground until it exits, or until SIGTERM or Ctrl-C stops it (and every
    process it started)."""
    repository = args.repository
    if "://" not in repository:
        path = Path(repository)
        if not path.is_dir():
            print(f"error: model repository {repository} is not a folder", file=sys.stderr)
            return 2
        repository = str(path.resolve())
    try:
        install = find_tritonserver()
    except TritonNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv, env = server_command(
        install, repository, args.http_port, args.grpc_port, args.metrics_port, args.address, not args.no_load
    )
    print(
        f"serving {repository}: HTTP {args.address}:{args.http_port}, gRPC {args.address}:{args.grpc_port}, "
        f"metrics {args.address}:{args.metrics_port}",
        file=sys.stderr,
    )
    # Its own process group (with the Python-backend stubs it starts), stopped as one on SIGTERM or Ctrl-C.
    proc = subprocess.Popen(argv, env=env, preexec_fn=_own_group_dying_with_parent)

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    except _Stop as e:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)  # Triton unloads its models and stops its stubs
        return 128 + e.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(proc, signal.SIGKILL)  # whatever of the group outlived the server
        proc.wait()


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _own_group_dying_with_parent() -> None:
    """Child side: a process group of its own, and SIGTERM should `finetune serve` itself be killed."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
