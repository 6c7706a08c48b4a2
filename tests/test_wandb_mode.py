"""wandb never prompts and never hangs: online only with a key and a reachable server."""

import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dfn.wandb_mode import choose_wandb_mode


def test_explicit_mode_wins(monkeypatch):  # the user's WANDB_MODE is used as it is
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == "disabled"


def test_no_key_means_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing-netrc"))
    assert choose_wandb_mode() == "offline"


def test_key_but_unreachable_server_means_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert choose_wandb_mode(timeout=1.0) == "offline"


class FakeWandb(BaseHTTPRequestHandler):
    """A local stand-in for the wandb API: accepts only the key GOOD, answers 401 otherwise."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        if auth == "Basic " + base64.b64encode(f"api:{GOOD}".encode()).decode():
            status, body = 200, {"data": {"viewer": {"id": "u1"}}}
        else:
            status, body = 401, {"errors": [{"message": "user is not logged in"}]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


GOOD = "g" * 40


@pytest.fixture
def fake_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWandb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()
    server.server_close()


def test_key_accepted_by_the_server_means_online(fake_server, monkeypatch, tmp_path):
    netrc_file = tmp_path / "netrc"  # the key `wandb login` stores
    netrc_file.write_text(f"machine 127.0.0.1\n  login user\n  password {GOOD}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    monkeypatch.chdir(tmp_path)
    assert choose_wandb_mode(timeout=5.0) == "online"


def test_rejected_key_falls_back_to_offline_with_one_line(fake_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert choose_wandb_mode(timeout=5.0) == "offline"
    assert time.monotonic() - start < 5.0
    assert os.environ["WANDB_MODE"] == "offline"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rejected the API key (HTTP 401)" in err[0] and "offline" in err[0]


def test_users_wandb_offline_setting_is_respected(fake_server, monkeypatch, tmp_path):
    """`wandb offline` (wandb's workspace settings file) wins over a valid key; WANDB_MODE stays unset."""
    monkeypatch.setenv("WANDB_API_KEY", GOOD)
    monkeypatch.chdir(tmp_path)
    assert choose_wandb_mode(timeout=5.0) == "online"  # the key alone would go online ...
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    assert choose_wandb_mode(timeout=5.0) == "offline"
    assert "WANDB_MODE" not in os.environ  # not written over the user's setting


def test_wandb_disabled_is_respected(fake_server, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", GOOD)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    monkeypatch.chdir(tmp_path)
    assert choose_wandb_mode(timeout=5.0) == "disabled"
    assert os.environ["WANDB_MODE"] == "disabled"  # wandb 0.31 no longer reads WANDB_DISABLED itself
