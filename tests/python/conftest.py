"""Starts the real `tollgate serve` embedded demo on free ports and reads its banner."""

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
