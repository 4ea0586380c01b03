"""The runtime's own ExecuTorch kernels (C++), compiled once per machine and registered before programs load.

Streaming programs (.pte format 4) call `voxtral::ring_attention.out` (ring_attention.cpp: attention over a ring KV
cache that reads each cache byte once; docs/pte.md, "Custom operator"). ExecuTorch finds kernels in a registry inside
its runtime library, so the kernel is a small shared library linked against the libexecutorch the Python bindings
loaded, registering itself when opened, like ExecuTorch's own `libcustom_ops_aot_lib`.

It is compiled from source on first use with the machine's C++ compiler (`$CXX`, else `c++`), tuned to this CPU, and
cached under `$VOXTRAL_RUNTIME_CACHE` (default `~/.cache/voxtral-runtime`) by a hash of the source, the compiler, the
flags, the ExecuTorch version and the CPU. `VOXTRAL_RUNTIME_KERNELS=/path/lib.so` uses a prebuilt library instead
(`voxtral-runtime build-kernels` prints where it built one, e.g. for a container image).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("voxtral_runtime")

SOURCES = ("ring_attention.cpp",)
LIBRARY_NAME = "voxtral_kernels"
PREBUILT_ENV = "VOXTRAL_RUNTIME_KERNELS"
CACHE_ENV = "VOXTRAL_RUNTIME_CACHE"
OPERATORS = ("voxtral::ring_attention.out",)


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled or loaded; the message says what to do."""


def _executorch_root() -> Path:
    import executorch

    for root in executorch.__path__:
        if (Path(root) / "include" / "executorch").is_dir():
            return Path(root)
    raise KernelBuildError(f"no ExecuTorch headers under {list(executorch.__path__)}: reinstall executorch==1.5.1")


def _arch_flags() -> list[str]:
    """Tuned to this CPU where the compiler allows it (the library is built on, and for, the machine that runs it)."""
    return ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else []


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared between machines never hands one CPU another's build."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_command(compiler: str, output: Path) -> list[str]:
    root = _executorch_root()
    include = root / "include"
    lib = root / "lib"
    sources = [str(Path(__file__).with_name(name)) for name in SOURCES]
    return [*shlex.split(compiler), "-O3", "-std=c++17", "-fPIC", "-shared", *_arch_flags(),
            # ExecuTorch's own build settings for kernels: its threadpool, its bundled c10 headers' macros, and its
            # event tracer (as in the pip build), so an ETDump profile times our kernel like any other operator.
            "-DET_USE_THREADPOOL", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED",
            f"-I{include}", f"-I{include / 'executorch/runtime/core/portable_type/c10'}",
            *sources, f"-L{lib}", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{lib}", "-o", str(output)]


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "voxtral-runtime"


def _compiler() -> str:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(shlex.split(compiler)[0]) is None:
        raise KernelBuildError(
            f"no C++ compiler ({compiler!r} is not on PATH): the runtime compiles its attention kernel once per "
            f"machine; install one (Debian/Ubuntu: apt install g++; macOS: xcode-select --install), set CXX, or "
            f"set {PREBUILT_ENV} to a library built by `voxtral-runtime build-kernels`")
    return compiler


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([*shlex.split(compiler), "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build(force: bool = False) -> Path:
    """Compiles the kernels for this machine unless a matching build is cached; returns the library's path."""
    import executorch.version

    compiler = _compiler()
    key = hashlib.sha256()
    for name in SOURCES:
        key.update(Path(__file__).with_name(name).read_bytes())
    for part in (" ".join(compile_command(compiler, Path("out"))), _compiler_version(compiler),
                 getattr(executorch.version, "__version__", ""), _cpu_signature(), platform.platform()):
        key.update(part.encode())
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    target = _cache_dir() / f"lib{LIBRARY_NAME}-{key.hexdigest()[:16]}{suffix}"
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling the runtime's attention kernel for this machine (once; cached in %s)", target.parent)
    # Compiled beside the target and renamed into place: concurrent builders never see half a library.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = compile_command(compiler, partial)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelBuildError(f"compiling {', '.join(SOURCES)} failed ({shlex.join(command[:1])} exit "
                                   f"{result.returncode}):\n{result.stderr.strip()[-4000:]}")
        os.replace(partial, target)
    return target


@functools.cache
def load() -> Path:
    """Builds (or finds) the kernels and registers them with the ExecuTorch runtime, once per process."""
    import executorch.runtime  # noqa: F401  (the pybindings load libexecutorch, whose registry the kernels join)

    path = Path(os.environ[PREBUILT_ENV]) if os.environ.get(PREBUILT_ENV) else build()
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise KernelBuildError(f"{path}: cannot load the runtime's kernels ({e}); rebuild them with "
                               f"`voxtral-runtime build-kernels --force`") from e
    return path
