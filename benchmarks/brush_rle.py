"""Decoding Label Studio brush RLE: label-studio-sdk's decoder beside the backend's.

Two inputs: a brush stroke as Label Studio's labeling screen writes it (R=G=B=A per pixel, six
blobs with anti-aliased outlines) on a large image, and a hostile RLE that declares a valid size but costs a
decoder one record per two values (the shape of the 22 MB body that took the SDK 68 s and 3.4 GB).
Time and peak Python memory (tracemalloc) of each decode, in one run on one machine. Writes
benchmarks/results/brush_rle.json and the `brush_rle` block of docs/performance.md.

    .venv/bin/python benchmarks/brush_rle.py [--width 4000 --height 2800]
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import ROOT, machine, replace_block, write_json  # noqa: E402


def stroke(height: int, width: int) -> list[int]:
    import cv2
    from label_studio_sdk.converter.brush import encode_rle

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    alpha = np.zeros((height, width), np.uint8)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, rng.uniform(0.05, 0.15) * width
        alpha[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = 255
    inside = cv2.erode(alpha, np.ones((3, 3), np.uint8))
    edge = (alpha > 0) & (inside == 0)  # the outline, anti-aliased as a canvas draws it
    alpha[edge] = rng.integers(1, 255, int(edge.sum()))
    return encode_rle(np.repeat(alpha.ravel(), 4))  # the labeling screen sets R=G=B=A


def hostile(height: int, width: int) -> list[int]:
    num = height * width * 4
    bits = format(num, "032b") + "00000" + "0000" * 4 + "000111" * (num // 2)
    bits += "0" * (-len(bits) % 8)
    return np.packbits(np.frombuffer(bits.encode(), np.uint8) - 48).tolist()


def timed(function, *args) -> dict:
    """Seconds of one decode, then its peak memory in a second one (tracemalloc slows Python down)."""
    started = time.perf_counter()
    try:
        function(*args)
        outcome = "decoded"
    except Exception as exc:  # the hostile input is refused: that is the outcome
        outcome = f"refused: {exc}"
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        function(*args)
    except Exception:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": round(seconds, 3), "peak_mb": round(peak / 2**20, 1), "outcome": outcome[:120]}


def main() -> None:
    from label_studio_sdk.converter.brush import decode_rle

    from backend.ls_format import decode_brush_rle

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=2800)
    parser.add_argument("--hostile-side", type=int, default=1024,
                        help="side of the hostile RLE's square (the SDK is timed on it only up to 1024)")
    args = parser.parse_args()
    h, w = args.height, args.width
    real = stroke(h, w)
    bad = hostile(args.hostile_side, args.hostile_side)
    rows = {
        "stroke_sdk": timed(lambda: decode_rle(real)),
        "stroke_backend": timed(decode_brush_rle, real, h, w),
        "hostile_sdk": timed(lambda: decode_rle(bad)) if args.hostile_side <= 1024 else None,
        "hostile_backend": timed(decode_brush_rle, bad, args.hostile_side, args.hostile_side),
    }
    results = {"machine": machine(), "stroke": {"width": w, "height": h, "rle_bytes": len(real)},
               "hostile": {"side": args.hostile_side, "rle_bytes": len(bad)}, "runs": rows}
    write_json(results, ROOT / "benchmarks" / "results" / "brush_rle.json")

    def cell(row):
        return "-" if row is None else f"{row['seconds']:.2f} s, {row['peak_mb']:.0f} MB ({row['outcome'].split(':')[0]})"

    text = "\n".join([
        f"Measured by `benchmarks/brush_rle.py` ({results['machine']}); time and peak Python memory of one decode.",
        "",
        "| input | label-studio-sdk `decode_rle` | backend `decode_brush_rle` |",
        "|---|---|---|",
        f"| a {w}x{h} brush stroke as the labeling screen writes it ({len(real):,} RLE bytes) | "
        f"{cell(rows['stroke_sdk'])} | {cell(rows['stroke_backend'])} |",
        f"| a hostile {args.hostile_side}x{args.hostile_side} RLE, one record per two values ({len(bad):,} bytes) | "
        f"{cell(rows['hostile_sdk'])} | {cell(rows['hostile_backend'])} |",
    ])
    replace_block("brush_rle", text)
    print(text)


if __name__ == "__main__":
    main()
