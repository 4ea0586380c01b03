"""The gRPC contract: generated code is fresh, importable as a package, and the client stays free of torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "scripts" / "gen_proto.py"
OUT = ROOT / "packages" / "voxtral-client" / "src" / "voxtral_client" / "proto"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_generated_code_is_not_stale():
    r = _run(str(GEN), "--check")
    assert r.returncode == 0, f"run `python scripts/gen_proto.py`:\n{r.stdout}\n{r.stderr}"


def test_check_detects_stale_and_stray_files(tmp_path):
    out = tmp_path / "proto"
    shutil.copytree(OUT, out, ignore=shutil.ignore_patterns("__pycache__"))
    assert _run(str(GEN), "--check", "--out", str(out)).returncode == 0
    pb2 = out / "realtime_pb2.py"
    pb2.write_text(pb2.read_text() + "# edited by hand\n")
    r = _run(str(GEN), "--check", "--out", str(out))
    assert r.returncode == 1 and "stale" in r.stderr and "realtime_pb2.py" in r.stderr
    assert _run(str(GEN), "--out", str(out)).returncode == 0  # regenerating fixes it
    (out / "old_pb2.py").write_text("")
    r = _run(str(GEN), "--check", "--out", str(out))
    assert r.returncode == 1 and "stray" in r.stderr


def test_generated_imports_are_package_relative():
    grpc_code = (OUT / "realtime_pb2_grpc.py").read_text()
    assert "from . import realtime_pb2 as" in grpc_code
    assert "from voxtral." not in grpc_code
    for path in OUT.glob("*.py"):
        assert str(ROOT) not in path.read_text(), f"{path.name} embeds a machine path"


def test_contract_shape():
    from voxtral_client.proto import realtime_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Realtime"]
    assert service.full_name == "voxtral.realtime.v1.Realtime"
    transcribe, describe = service.methods_by_name["Transcribe"], service.methods_by_name["Describe"]
    assert transcribe.client_streaming and transcribe.server_streaming
    assert transcribe.input_type.name == "TranscribeRequest" and transcribe.output_type.name == "TranscribeResponse"
    assert not describe.client_streaming and not describe.server_streaming
    assert describe.output_type.name == "ModelDescription"
    request = pb.TranscribeRequest.DESCRIPTOR
    assert [f.name for f in request.oneofs_by_name["request"].fields] == ["config", "audio", "control"]
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():  # proto3 style: a zero UNSPECIFIED value, prefixed names
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name
        prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
        assert all(v.name.startswith(prefix) for v in enum.values), enum.name


def test_client_imports_without_torch():
    code = (
        "import sys; import voxtral_client.cli, voxtral_client.client; "
        "assert 'torch' not in sys.modules and 'executorch' not in sys.modules; "
        "assert 'soxr' not in sys.modules and 'voxtral_runtime' not in sys.modules; "
        "assert 'sounddevice' not in sys.modules, 'sounddevice must be imported lazily'"
    )
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
