"""Shared fixtures: the tiny random-weight model (built once per session through the real CLI path)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tiny model's operations are so small that thread hand-offs dominate them, and on a busy
# 2-core machine they make every call many times slower: one thread, here and in subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def weizmann_dir():
    """Real photos with hand-made masks (read its README), beside the checkout on every machine of
    this project; G4SEG_WEIZMANN_DIR points elsewhere."""
    path = Path(os.environ.get("G4SEG_WEIZMANN_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann_horse")
    if not path.is_dir():
        pytest.fail(f"the Weizmann Horse photos are not in {path} (set G4SEG_WEIZMANN_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A folder with g4seg's tiny model (diffusers layout, safetensors), written by make_tiny_model."""
    from g4seg_core.method.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny model loaded once (float32, CPU); tests that change its state restore it."""
    from g4seg_core.method.model import SDModel

    return SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the session (tests/run.sh installs it); its URL."""
    import shutil
    import socket
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (tests/run.sh installs it: apt-get install -y redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                                "--appendonly", "no", "--daemonize", "no"], stdout=open(workdir / "redis.log", "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server
