"""The backend's settings, read once from the environment (see docs/operators.md for each one)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from g4seg_core.engines.factory import ENGINE_CHOICES
from g4seg_core.errors import SettingError

log = logging.getLogger(__name__)

# Refiner settings come from G4SEG_<FIELD> for each RefinerConfig field; these G4SEG_ names are
# the backend's own and never a refiner field.
_OWN_NAMES = {
    "G4SEG_ENGINE", "G4SEG_MODEL", "G4SEG_DEVICE", "G4SEG_DTYPE", "G4SEG_CPU_DTYPE", "G4SEG_HOST",
    "G4SEG_THREADS", "G4SEG_WORKERS", "G4SEG_TIMEOUT", "G4SEG_MAX_IMAGE_PIXELS", "G4SEG_MAX_IMAGE_BYTES",
    "G4SEG_MAX_REQUEST_BYTES", "G4SEG_QUEUE_SIZE", "G4SEG_WRITEBACK_QUEUE_SIZE", "G4SEG_WRITEBACK_BACKOFF",
    "G4SEG_WRITEBACK_MAX_DELAY", "G4SEG_WRITEBACK_MAX_AGE", "G4SEG_QUEUE_URL", "G4SEG_DATA_DIR",
    "G4SEG_RESULT_CACHE_SIZE", "G4SEG_IMAGE_CACHE_SIZE", "G4SEG_LABEL_STUDIO_VENV", "G4SEG_LOG_LEVEL",
    "G4SEG_PREANNOTATE", "G4SEG_PREANNOTATE_REFINE", "G4SEG_OUTPUT", "G4SEG_CONNECT_TIMEOUT",
    "G4SEG_READ_TIMEOUT", "G4SEG_DOWNLOAD_TIMEOUT", "G4SEG_HEADER_TIMEOUT", "G4SEG_BODY_TIMEOUT", "G4SEG_SLOT_WAIT",
    "G4SEG_DECODER", "G4SEG_COMPILE",  # read by the core when the model loads
}


# Numeric settings: field -> (environment variable, type, smallest value). docs/operators.md lists
# each with its default (tests/backend/test_operators_doc.py compares them).
NUMBERS = {
    "max_image_pixels": ("G4SEG_MAX_IMAGE_PIXELS", int, 1),
    "max_image_bytes": ("G4SEG_MAX_IMAGE_BYTES", int, 1),
    "max_request_bytes": ("G4SEG_MAX_REQUEST_BYTES", int, 1024),
    "queue_size": ("G4SEG_QUEUE_SIZE", int, 1),
    "slot_wait": ("G4SEG_SLOT_WAIT", float, 0),
    "connect_timeout": ("G4SEG_CONNECT_TIMEOUT", float, 0.1),
    "read_timeout": ("G4SEG_READ_TIMEOUT", float, 0.1),
    "download_timeout": ("G4SEG_DOWNLOAD_TIMEOUT", float, 0.1),
    "header_timeout": ("G4SEG_HEADER_TIMEOUT", float, 0.1),
    "body_timeout": ("G4SEG_BODY_TIMEOUT", float, 0.1),
    "writeback_queue_size": ("G4SEG_WRITEBACK_QUEUE_SIZE", int, 1),
    "writeback_backoff": ("G4SEG_WRITEBACK_BACKOFF", float, 0),
    "writeback_max_delay": ("G4SEG_WRITEBACK_MAX_DELAY", float, 0),
    "writeback_max_age": ("G4SEG_WRITEBACK_MAX_AGE", float, 0),
    "result_cache_size": ("G4SEG_RESULT_CACHE_SIZE", int, 1),
    "image_cache_size": ("G4SEG_IMAGE_CACHE_SIZE", int, 0),
    "port": ("PORT", int, 1),
    "workers": ("G4SEG_WORKERS", int, 1),
    "threads": ("G4SEG_THREADS", int, 2),
    "timeout": ("G4SEG_TIMEOUT", int, 1),
}


OUTPUT_CHOICES = ("brush", "polygon")


@dataclass(frozen=True)
class Settings:
    # Label Studio this backend serves: images come only from here, predictions go back here.
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    local_files_root: Path | None = None  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, when mounted here
    # Engine
    engine: str = "auto"
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    refiner_settings: dict = field(default_factory=dict)  # typed RefinerConfig fields
    # Access
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    # Limits
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 64 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    queue_size: int = 4  # refinements running or waiting at once per process
    slot_wait: float = 30.0  # seconds a request waits for one of those slots before 503
    # The durable job queue (backend/jobs.py): SQLite in data_dir, or Redis at queue_url.
    queue_url: str | None = None
    data_dir: Path = field(default_factory=lambda: default_data_dir({}))
    writeback_queue_size: int = 10_000  # write-back jobs waiting; past it, 503
    writeback_backoff: float = 2.0  # seconds before the first retry; doubles each time
    writeback_max_delay: float = 60.0  # the longest wait between two tries
    writeback_max_age: float = 86_400.0  # a job still failing this long after it was queued is dead-lettered
    result_cache_size: int = 256
    image_cache_size: int = 8
    # Outbound calls (image downloads): seconds to connect, to wait for any bytes, for a whole download
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    download_timeout: float = 30.0
    # Clients: seconds to send the request line and headers, and the whole body
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    # Server (used by `g4seg serve`)
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 8
    timeout: int = 300
    log_level: str = "INFO"
    # Batch predictions for tasks with no rough shape: text-only masks (iseg | diffsegmenter), or off.
    preannotate_method: str | None = None
    preannotate_refine: bool = True
    # Refined masks as brush regions, or as polygons (for teams that export polygons); a project
    # whose config has only one of the two tags gets that one whatever this says.
    output: str = "brush"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def can_write_back(self) -> bool:
        return bool(self.label_studio_url and self.label_studio_api_key)

    def engine_description(self) -> dict:
        return {"engine": self.engine, "model": self.model, "device": self.device, "dtype": self.dtype,
                "settings": dict(self.refiner_settings)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from environment variables; `overrides` (non-None values) win, e.g. CLI flags."""
        env = os.environ if env is None else env
        values = dict(
            label_studio_url=_url(env.get("LABEL_STUDIO_URL")),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            local_files_root=_root(env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")),
            engine=_choice("G4SEG_ENGINE", env.get("G4SEG_ENGINE", "auto"), ENGINE_CHOICES),
            model=env.get("G4SEG_MODEL") or None,
            device=env.get("G4SEG_DEVICE", "auto") or "auto",
            dtype=env.get("G4SEG_DTYPE", "auto") or "auto",
            refiner_settings=refiner_settings_from_env(env),
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            host=env.get("G4SEG_HOST", cls.host) or cls.host,
            log_level=(env.get("G4SEG_LOG_LEVEL") or env.get("LOG_LEVEL") or cls.log_level).upper(),
            preannotate_method=_preannotate_method(env.get("G4SEG_PREANNOTATE", "")),
            preannotate_refine=_flag("G4SEG_PREANNOTATE_REFINE", env.get("G4SEG_PREANNOTATE_REFINE", "true")),
            output=_choice("G4SEG_OUTPUT", env.get("G4SEG_OUTPUT", "brush") or "brush", OUTPUT_CHOICES),
            queue_url=_queue_url(env.get("G4SEG_QUEUE_URL")),
            data_dir=default_data_dir(env),
        )
        for name, (var, kind, minimum) in NUMBERS.items():
            if env.get(var):
                values[name] = _number(var, env[var], kind, minimum)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        if bool(values["basic_auth_user"]) != bool(values["basic_auth_pass"]):
            raise SettingError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if values["engine"] not in ENGINE_CHOICES:
            raise SettingError(f"unknown engine {values['engine']!r} (choose from {', '.join(ENGINE_CHOICES)})")
        return cls(**values)


def default_data_dir(env: Mapping[str, str]) -> Path:
    """G4SEG_DATA_DIR, else the user's cache folder (the Docker images set it inside the model-cache volume)."""
    if env.get("G4SEG_DATA_DIR"):
        return Path(env["G4SEG_DATA_DIR"]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "g4seg"


def _queue_url(value: str | None) -> str | None:
    if not value:
        return None  # the embedded SQLite queue in G4SEG_DATA_DIR
    parsed = urlparse(value)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.netloc or parsed.path):
        raise SettingError(f"G4SEG_QUEUE_URL must be a redis://, rediss:// or unix:// address, got {value!r} "
                           "(leave it unset for the embedded SQLite queue in G4SEG_DATA_DIR)")
    return value


def _preannotate_method(value: str) -> str | None:
    value = value.strip().lower()
    if value in ("", "off", "none", "false", "0"):
        return None
    return _choice("G4SEG_PREANNOTATE", value, ("iseg", "diffsegmenter"))


def _flag(name: str, value: str) -> bool:
    from g4seg_core.method.config import parse_text_value

    try:
        return parse_text_value(value, True)
    except SettingError:
        raise SettingError(f"{name}={value!r} is not true or false") from None


def refiner_settings_from_env(env: Mapping[str, str]) -> dict:
    """G4SEG_<FIELD> for every RefinerConfig field, checked and typed by RefinerConfig itself."""
    from g4seg_core.method.config import RefinerConfig

    names = {f"G4SEG_{f.name.upper()}": f.name for f in fields(RefinerConfig)}
    unknown = sorted(k for k in env if k.startswith("G4SEG_") and k not in names and k not in _OWN_NAMES)
    if unknown:  # most likely a typo; other tools of the project may use G4SEG_ names too, so only warn
        log.warning("ignoring %s: not a backend setting nor a refiner field (%s)", ", ".join(unknown),
                    ", ".join(sorted(names)))
    raw = {names[k]: v for k, v in env.items() if k in names}
    try:
        config = RefinerConfig.from_strings(raw)
    except SettingError as exc:
        raise SettingError(f"refiner settings: {exc}") from None
    return {key: getattr(config, key) for key in raw}


def _url(value: str | None) -> str | None:
    if not value:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingError(f"LABEL_STUDIO_URL must start with http:// or https:// and name a host, got {value!r}")
    return value.rstrip("/")


def _root(value: str | None) -> Path | None:
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if root == Path(root.anchor):
        raise SettingError("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT must not be the file system root")
    return root


def _choice(var: str, value: str, choices) -> str:
    value = (value or "").strip().lower()
    if value not in choices:
        raise SettingError(f"{var}={value!r} is not one of {', '.join(choices)}")
    return value


def _number(var: str, raw: str, kind, minimum):
    try:
        value = kind(raw)
    except ValueError:
        raise SettingError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingError(f"{var}={raw!r} is not a finite number")
    if value < minimum:
        raise SettingError(f"{var} must be at least {minimum}, got {raw}")
    return value
