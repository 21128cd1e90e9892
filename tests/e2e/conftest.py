"""Session fixtures for end-to-end tests against a real Label Studio 1.23.2 (see labelstudio.py).

- `label_studio`: one Label Studio per session (~50 s to start), stopped at the end.
- `label_config_xml`: a label config with one *Labels tag per tool (tests/e2e/rows_config.xml), the
  style the API tests build their regions in; `shipped_config_xml`: the project's label_config.xml
  (one Labels row shared by every tool), which the browser tests use.
- `start_backend(env, auth=...)`: starts `g4seg serve` as a real process with LABEL_STUDIO_URL and
  LABEL_STUDIO_API_KEY pointing at `label_studio` (plus `env`); every backend is stopped at the end.
- `test_images(count, seed)`: small synthetic images with their object masks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from labelstudio import REPO_ROOT, BackendProcess, LabelStudio, write_test_images  # noqa: E402


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    server = LabelStudio.start(tmp_path_factory.mktemp("label-studio"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def label_config_xml() -> str:
    return (Path(__file__).parent / "rows_config.xml").read_text()


@pytest.fixture(scope="session")
def shipped_config_xml() -> str:
    return (REPO_ROOT / "label_config.xml").read_text()


@pytest.fixture(scope="session")
def start_backend(label_studio, tmp_path_factory):
    started: list[BackendProcess] = []
    workdir = tmp_path_factory.mktemp("backends")

    def start(env: dict[str, str], auth: tuple[str, str] | None = ("g4seg", "e2e-secret")) -> BackendProcess:
        full = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, **env}
        backend = BackendProcess.start(workdir, full, auth=auth)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture(scope="session")
def test_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")

    def make(count: int, seed: int = 0):
        return write_test_images(folder, count, seed=seed)

    return make
