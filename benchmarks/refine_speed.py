"""Refinement latency and memory on the full-size SD 2.1-base architecture with random weights.

For each (device, dtype, working size) it measures, in one process so the ratios compare like
with like: one bare UNet call, one VAE encode, a cold refine (first on an image: encode, reference
pass, iterations) and a warm refine (another shape on the same image: iterations only), in the
latent discrepancy space (the fastest) and in RGB (the default). Early stop is off, so a refine
runs exactly --iterations mask-conditioned passes.

    python benchmarks/refine_speed.py                        # CPU float32 and bfloat16 at 512, bfloat16 at 256/384
    python benchmarks/refine_speed.py --device cuda --dtypes float16 --sizes 512

Writes benchmarks/results/refine_speed-<device>.json and the refine_speed block of docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import (  # noqa: E402
    DEFAULT_CONFIG_DIR,
    ROOT,
    machine,
    replace_block,
    write_json,
)


def timed(fn, repeat=1):
    import torch

    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_one(config_dir: str, device: str, dtype_name: str, size: int, iterations: int, spaces: list[str]) -> dict:
    """Runs in its own process so peak memory belongs to this configuration alone."""
    import numpy as np
    import torch

    from benchmarks.random_sd import build_random_sd
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.refiner import G4SegRefiner
    from g4seg_core.prompts import Prompt

    dtype = getattr(torch, dtype_name)
    model = build_random_sd(Path(config_dir), device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    images = [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(2 * len(spaces))]
    mask = np.zeros((size, size), bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    nudged = np.roll(mask, size // 32, axis=1)

    text = model.encode_text(["a photograph of a cat"])
    z = model.noise((1, 4, size // 8, size // 8), seed=0)
    pixels = torch.zeros(1, 3, size, size)
    model.predict_x0(z, 100, text)  # warm-up: first calls allocate
    model.encode_image(pixels)
    row = {"device": device, "dtype": dtype_name, "working_size": size, "iterations": iterations,
           "unet_call_s": timed(lambda: model.predict_x0(z, 100, text), repeat=2),
           "vae_encode_s": timed(lambda: model.encode_image(pixels)),
           "vae_decode_s": timed(lambda: model.decode_latents(z))}
    for i, space in enumerate(spaces):
        refiner = G4SegRefiner(model, RefinerConfig(working_size=size, iterations=iterations, early_stop=False,
                                                    discrepancy_space=space, roi=False))
        refiner.refine(images[2 * i], Prompt(mask=mask), "cat")  # the class's text is cached from here on
        cold_image = images[2 * i + 1]
        row[f"cold_{space}_s"] = timed(lambda: refiner.refine(cold_image, Prompt(mask=mask), "cat"))
        row[f"warm_{space}_s"] = timed(lambda: refiner.refine(cold_image, Prompt(mask=nudged), "cat"), repeat=2)
    if device.startswith("cuda"):
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        row["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    u = row["unet_call_s"]
    row["warm_latent_over_unet_calls"] = row["warm_latent_s"] / (iterations * u)
    row["cold_minus_warm_over_encode_plus_reference"] = (row["cold_latent_s"] - row["warm_latent_s"]) / (
        row["vae_encode_s"] + u)
    return row


def render(rows: list[dict], when: str, where: str, config_dir: str) -> str:
    lines = [
        f"Measured {when} on {where} by `python benchmarks/refine_speed.py`, full-size SD 2.1-base architecture "
        f"with random weights (configs: `{Path(config_dir).name}`), a 512x512-style square image refined whole "
        "(no crop), early stop off. Times in seconds; a *warm* refine is a second shape on the same image.",
        "",
        "| device | dtype | working size | bare UNet call | VAE encode | cold (latent) | warm (latent) | "
        "cold (rgb) | warm (rgb) | warm / its UNet calls | (cold - warm) / (encode + ref. pass) | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['dtype']} | {r['working_size']} | {r['unet_call_s']:.2f} | {r['vae_encode_s']:.2f} | "
            f"{r['cold_latent_s']:.2f} | {r['warm_latent_s']:.2f} | {r.get('cold_rgb_s', float('nan')):.2f} | "
            f"{r.get('warm_rgb_s', float('nan')):.2f} | {r['warm_latent_over_unet_calls']:.2f} | "
            f"{r['cold_minus_warm_over_encode_plus_reference']:.2f} | {r['peak_memory_gib']:.1f} |"
        )
    lines += ["", f"{rows[0]['iterations']} iterations. Targets: warm / its UNet calls <= 1.3; "
              "(cold - warm) / (encode + reference pass) <= 1."]
    lines += ["", *click_costs(rows)]
    return "\n".join(lines)


def click_costs(rows: list[dict], budget_s: float = 10.0) -> list[str]:
    """What one click (a warm refine) costs per dtype, and the largest working size under the budget."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = sorted((r for r in rows if r["dtype"] == dtype), key=lambda r: r["working_size"])
        costs = ", ".join(f"{r['warm_latent_s']:.1f} s at {r['working_size']} (RGB space: {r['warm_rgb_s']:.1f} s)"
                          for r in mine if "warm_rgb_s" in r)
        fits = [r["working_size"] for r in mine if r["warm_latent_s"] < budget_s]
        verdict = (f"under {budget_s:.0f} s at working size {max(fits)} and below (of the sizes measured)" if fits
                   else f"over {budget_s:.0f} s at every size measured")
        out.append(f"- {mine[0]['device']} {dtype}: a click (warm refine, latent space) costs {costs}; {verdict}.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="diffusers folder with configs + tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="float32:512,bfloat16:512,bfloat16:384,bfloat16:256",
                        help="comma-separated dtype:size pairs")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--spaces", default="latent,rgb")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the docs block from the saved results JSON, measuring nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: dtype:size measured in this process
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results" / f"refine_speed-{args.device.split(':')[0]}.json"
    if args.render_only:
        saved = json.loads(results.read_text())
        replace_block("refine_speed", render(saved["rows"], saved["date"], saved["machine"], args.config_dir))
        return 0
    spaces = args.spaces.split(",")
    if args.one:
        dtype, size = args.one.split(":")
        print(json.dumps(measure_one(args.config_dir, args.device, dtype, int(size), args.iterations, spaces)))
        return 0
    rows = []
    for run in args.runs.split(","):
        print(f"measuring {args.device} {run} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", run, "--device", args.device, "--config-dir",
                              args.config_dir, "--iterations", str(args.iterations), "--spaces", args.spaces],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    when = time.strftime("%Y-%m-%d")
    where = machine()
    write_json({"machine": where, "date": when, "rows": rows}, results)
    if not args.no_doc:
        replace_block("refine_speed", render(rows, when, where, args.config_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
