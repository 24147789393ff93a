"""Starts the real `tollgate serve` embedded demo on free ports and reads its banner."""

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _binary() -> str:
    return os.environ.get("TOLLGATE_BIN", str(ROOT / "target" / "debug" / "tollgate"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    proc = subprocess.Popen(
        [_binary(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path_factory.mktemp("demo"),
    )
    fields = {}
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("curl "):
            break
        for name in ("endpoint:", "key:", "unified:", "openai:"):
            if name in line:
                # "host-style: ... unified: URL openai: URL" holds several fields on one line.
                fields[name[:-1]] = line.split(name, 1)[1].split()[0]
    else:
        raise RuntimeError("the demo exited before printing its banner")
    endpoint = fields["endpoint"]
    base = endpoint.split("/openai/deployments/")[0]
    yield {
        "base": base,
        "endpoint": endpoint,
        "deployment": endpoint.rsplit("/", 1)[1],
        "key": fields["key"],
    }
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _read_until(proc, marker):
    for line in proc.stdout:
        if marker in line:
            return line
    raise RuntimeError(f"the process exited before printing {marker!r}")


@pytest.fixture(scope="session")
def configured(tmp_path_factory):
    """A gateway from a configuration file with a 64 KiB body limit, in front of a mock backend
    that streams no usage."""
    work = tmp_path_factory.mktemp("no-usage")
    mock = subprocess.Popen(
        [_binary(), "mock-backend", "--listen", "127.0.0.1:0", "--no-stream-usage"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    mock_url = _read_until(mock, "listening on").split("listening on", 1)[1].strip()
    key = "NoUsageKey0123456789abcdefghijkl"
    digest = hashlib.sha256(key.encode()).hexdigest()
    config = work / "tollgate.toml"
    config.write_text(
        f"""[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
[admin]
listen = "127.0.0.1:0"
[[deployments]]
name = "no-usage"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
backend = "{mock_url}"
keys = ["sha256:{digest}"]
"""
    )
    gateway = subprocess.Popen(
        [_binary(), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=work,
    )
    base = _read_until(gateway, "gateway:").split("gateway:", 1)[1].strip()
    yield {"base": base, "deployment": "no-usage", "key": key, "max_body_bytes": 65536}
    for proc in (gateway, mock):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
