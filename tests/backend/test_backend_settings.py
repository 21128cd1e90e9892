"""Backend settings from the environment, and `g4seg serve` refusing bad ones in one line."""
from __future__ import annotations

import pytest

from backend.commands.serve import gunicorn_options
from backend.settings import Settings
from g4seg_core.cli import main
from g4seg_core.errors import SettingError


def test_defaults_serve_port_9090_with_auto_engine():
    settings = Settings.from_env({})
    assert settings.port == 9090 and settings.engine == "auto" and settings.refiner_settings == {}
    assert not settings.auth_enabled and not settings.can_write_back
    options = gunicorn_options(settings)
    assert options["bind"] == "0.0.0.0:9090" and options["workers"] == 1 and options["preload_app"] is False


def test_every_refiner_field_maps_from_its_g4seg_variable():
    from dataclasses import fields

    from g4seg_core.method.config import RefinerConfig

    env = {"G4SEG_ALPHA": "2.5", "G4SEG_ITERATIONS": "2", "G4SEG_WORKING_SIZE": "256", "G4SEG_ROI": "false",
           "G4SEG_DISCREPANCY_SPACE": "latent", "G4SEG_INJECTION_RESOLUTIONS": "16,32"}
    settings = Settings.from_env(env)
    assert settings.refiner_settings == {"alpha": 2.5, "iterations": 2, "working_size": 256, "roi": False,
                                         "discrepancy_space": "latent", "injection_resolutions": (16, 32)}
    RefinerConfig(**settings.refiner_settings)  # what create_engine will build
    names = {f"G4SEG_{f.name.upper()}" for f in fields(RefinerConfig)}
    assert {"G4SEG_BETA", "G4SEG_TIMESTEP", "G4SEG_SEED", "G4SEG_THRESHOLD"} <= names


def test_backend_settings_from_the_environment(tmp_path):
    env = {"LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": "abc", "G4SEG_ENGINE": "Classic",
           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "PORT": "9191", "G4SEG_QUEUE_SIZE": "2",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path), "G4SEG_MODEL": "/models/sd21"}
    settings = Settings.from_env(env, port=9999)
    assert settings.label_studio_url == "http://ls:8080" and settings.engine == "classic"
    assert settings.auth_enabled and settings.can_write_back and settings.port == 9999
    assert settings.queue_size == 2 and settings.local_files_root == tmp_path and settings.model == "/models/sd21"


@pytest.mark.parametrize("env, reason", [
    ({"G4SEG_ENGINE": "magic"}, "G4SEG_ENGINE"),
    ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL"),
    ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS"),
    ({"G4SEG_QUEUE_SIZE": "0"}, "at least 1"),
    ({"PORT": "http"}, "PORT"),
    ({"G4SEG_ALPHA": "-1"}, "alpha"),
    ({"G4SEG_ITERATIONS": "many"}, "iterations"),
    ({"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/"}, "file system root"),
])
def test_bad_settings_are_refused_with_the_variable_named(env, reason):
    with pytest.raises(SettingError, match=reason):
        Settings.from_env(env)


def test_serve_reports_a_bad_setting_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("G4SEG_ENGINE", "magic")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("g4seg: error:") and "G4SEG_ENGINE" in err and err.count("\n") == 1


def test_operators_doc_lists_every_setting():
    from dataclasses import fields
    from pathlib import Path

    from backend.settings import _OWN_NAMES
    from g4seg_core.method.config import RefinerConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()
    refiner = {f"G4SEG_{f.name.upper()}" for f in fields(RefinerConfig)}
    backend = _OWN_NAMES - {"G4SEG_LABEL_STUDIO_VENV"}  # the test harness's, documented with the tests
    own = {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "BASIC_AUTH_USER",
           "BASIC_AUTH_PASS", "PORT"}
    missing = sorted(name for name in refiner | backend | own if f"`{name}`" not in doc)
    assert not missing, f"docs/operators.md does not document {missing}"
