"""HTTP/2 clients that send more body than the gateway takes get the 413 answer, not a reset."""

import json
import socket
import subprocess
import shutil
from urllib.parse import urlparse

import h2.config
import h2.connection
import h2.events
import pytest


def _post_over_h2(base, path, key, body_len):
    """POSTs `body_len` bytes over cleartext HTTP/2 (prior knowledge), sending as flow control
    allows while reading the answer. Returns (status, body, reset error code or None)."""
    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    stream = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"), (":path", path), (":scheme", "http"), (":authority", url.netloc),
        ("api-key", key), ("content-type", "application/json"), ("content-length", str(body_len)),
    ]
    conn.send_headers(stream, headers)
    sock.sendall(conn.data_to_send())
    sent, status, body, reset, ended, sending = 0, None, b"", None, False, True
    chunk = b"a" * 16384
    while not ended and reset is None:
        while sending and sent < body_len:
            room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, body_len - sent)
            if room <= 0:
                break
            conn.send_data(stream, chunk[:room], end_stream=sent + room == body_len)
            sent += room
            sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
            elif isinstance(event, h2.events.StreamReset):
                reset = event.error_code
                sending = False
        sock.sendall(conn.data_to_send())
    sock.close()
    return status, body, reset


def test_an_oversized_body_over_http2_gets_its_413_and_no_reset(configured):
    limit = configured["max_body_bytes"]
    path = f"/openai/deployments/{configured['deployment']}/chat/completions"
    # Past the flow-control windows the gateway grants (1 MiB and more), so that the client is
    # still sending when the answer comes.
    for body_len in (limit + 1, 3 << 20, 12 << 20):
        status, body, reset = _post_over_h2(configured["base"], path, configured["key"], body_len)
        assert status == 413, (status, body, reset)
        assert json.loads(body)["error"]["code"] == "RequestEntityTooLarge"
        assert reset is None, f"the stream was reset ({reset}) after a body of {body_len} bytes"
    # A wrong key on a request with a body: the 401 arrives whole too.
    status, body, reset = _post_over_h2(configured["base"], "/v1/chat/completions", "wrong", 3 << 20)
    assert status == 401 and reset is None, (status, body, reset)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_over_http2_shows_the_413(configured, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"a" * (8 << 20))
    url = configured["base"] + f"/openai/deployments/{configured['deployment']}/chat/completions"
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code} %{http_version}",
         "-H", f"api-key: {configured['key']}", "-H", "content-type: application/json",
         "--data-binary", f"@{big}", url],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "413 2", out.stdout
    assert json.loads(body)["error"]["code"] == "RequestEntityTooLarge"
