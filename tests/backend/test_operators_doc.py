"""docs/operators.md states the limits and status codes exactly as the server has them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.settings import NUMBERS, Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()


def documented_defaults() -> dict[str, str]:
    """`VAR` -> its default as the settings table writes it (rows naming two variables give two)."""
    out = {}
    for names, defaults in re.findall(r"^\| (`[A-Z_0-9]+`(?:, `[A-Z_0-9]+`)*) \| ([^|]+) \|", DOC, re.MULTILINE):
        names = re.findall(r"`([A-Z_0-9]+)`", names)
        values = [v.strip().strip("`") for v in defaults.split(",")]
        if len(values) == len(names):
            out.update(zip(names, values))
    return out


@pytest.mark.parametrize("field", sorted(NUMBERS))
def test_every_numeric_setting_is_documented_with_its_default(field):
    var = NUMBERS[field][0]
    default = getattr(Settings(), field)
    documented = documented_defaults().get(var)
    assert documented is not None, f"docs/operators.md has no settings row for {var}"
    assert float(documented) == float(default), f"{var}: documented {documented}, the server's default is {default}"


def test_the_gunicorn_limits_the_status_table_names_are_the_servers():
    from gunicorn.config import Config

    config = Config()
    table = DOC[DOC.index("| status | when |"):]
    assert f"longer than {config.limit_request_line} bytes" in table
    assert f"longer than {config.limit_request_field_size} bytes or more than {config.limit_request_fields} headers" in table
    assert f"`worker_connections` ({config.worker_connections} per worker)" in DOC


def test_every_status_the_error_mapping_gives_is_documented():
    from backend.fetch import (ImageAccessDenied, ImageDownloadError, ImageDownloadTimeout, ImageNameError,
                               ImageTooLarge)
    from backend.ls_format import MAX_RLE_RUNS, FormatError, RleTooLarge
    from backend.service import error_status
    from g4seg_core.errors import ImageError

    table = DOC[DOC.index("| status | when |"):]
    documented = {int(code) for code in re.findall(r"^\| (\d{3}) \|", table, re.MULTILINE)}
    errors = [ImageAccessDenied("x"), ImageDownloadError("x"), ImageDownloadTimeout("x"), ImageNameError("x"),
              ImageTooLarge("x"), FormatError("x"), RleTooLarge("x"), ImageError("x")]
    assert {error_status(exc)[0] for exc in errors} | {401, 404, 405, 408, 414, 431, 503} == documented
    assert f"more than {MAX_RLE_RUNS:,} runs" in table
