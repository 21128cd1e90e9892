"""Shared by the benchmark scripts: write results JSON and replace one marked block of docs/performance.md."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch

from g4seg_core.images import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_DIR = ROOT.parent / "shared" / "models" / "sd21-base"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    from g4seg_core.method.loading import cpu_computes_bfloat16

    name = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() often says only x86_64
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    bf16 = "bfloat16 in hardware" if cpu_computes_bfloat16() else "no bfloat16 in hardware (no AVX512-BF16/AMX)"
    return f"CPU: {name}, {os.cpu_count()} cores, {bf16}, torch {torch.__version__}"


def write_json(data, path: Path) -> None:
    write_text_atomic(json.dumps(data, indent=2), path)


def replace_block(name: str, text: str, doc: Path = ROOT / "docs" / "performance.md") -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> in `doc`."""
    content = doc.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(\n<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{doc} has no block named {name}")
    doc.write_text(pattern.sub(lambda m: m.group(1) + text.strip() + m.group(2), content))
