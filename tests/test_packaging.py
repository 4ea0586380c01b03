"""Each package builds on its own; the client's wheel installs alone into a clean environment without torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["voxtral-format", "voxtral-model", "voxtral-export", "voxtral-runtime", "voxtral-client"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the packages (pip install uv)"
    for package in PACKAGES:
        subprocess.run([uv, "build", "--package", package, "--wheel", "--out-dir", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
    return {p: next(out.glob(p.replace("-", "_") + "-*.whl")) for p in PACKAGES}


def test_every_package_builds_a_wheel_with_its_code(wheels):
    for package, wheel in wheels.items():
        names = zipfile.ZipFile(wheel).namelist()
        module = package.replace("-", "_")
        assert any(n.startswith(f"{module}/") and n.endswith(".py") for n in names), package
    client = zipfile.ZipFile(wheels["voxtral-client"]).namelist()
    assert "voxtral_client/proto/realtime_pb2.py" in client and "voxtral_client/proto/realtime_pb2_grpc.py" in client


def test_client_wheel_installs_alone_without_torch(wheels, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheels["voxtral-client"])], check=True,
                   capture_output=True)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                               text=True).stdout.lower()
    for heavy in ("torch", "executorch", "torchao", "voxtral-model", "voxtral-runtime"):
        assert f"\n{heavy}==" not in f"\n{installed}", heavy
    result = subprocess.run([str(venv / "bin" / "voxtral-client"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--mic" in result.stdout
