"""deploy/: the container's command line is one `voxtral-runtime serve` accepts, and the Kubernetes manifest probes
the health service the server registers, on the ports the container serves."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from voxtral_runtime import serve, server

ROOT = Path(__file__).resolve().parent.parent


def entrypoint() -> list[str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", "")
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))


def serve_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    serve.add_arguments(parser)
    return parser.parse_args(argv)


def test_container_and_manifest_agree_with_the_server():
    command = entrypoint()
    assert command[:2] == ["voxtral-runtime", "serve"]
    deployment, service = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = serve_args(command[2:] + container["args"])  # the manifest's args are appended to the entrypoint
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "websocket": args.websocket_port, "metrics": args.metrics_port}
    assert container["readinessProbe"]["grpc"] == {"port": args.port, "service": server.SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == container["startupProbe"]["grpc"]["port"] == args.port
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > args.grace
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
