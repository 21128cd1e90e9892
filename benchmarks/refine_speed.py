"""Refinement latency and memory on the full-size SD 2.1-base architecture with random weights.

For each (device, dtype, working size), in one process so that the ratios compare like with like:
one bare UNet call, a VAE encode, a full VAE decode and a fast (TAESD) decode; a cold refine (first
on an image: encode, reference pass, iterations) and a warm refine (another shape on the same
image: iterations only) in the default discrepancy space (`auto`: RGB through the fast decoder)
and in the latent space; the **naive reading** of the method in the same run (no caches, a
full-size VAE decode every iteration, the local Hausdorff distance as a double loop over window
offsets, classes one at a time); and three classes of one image refined as one batch against the
same three one by one. Early stop is off, so a refine runs --iterations updates; the signal is
evaluated again only when the mask changed, and each row says how many passes ran.

    python benchmarks/refine_speed.py                                  # CPU bfloat16 at 512, 384, 256
    python benchmarks/refine_speed.py --device cuda --runs float16:512   # a GPU (adds CUDA peak memory)

Writes benchmarks/results/refine_speed-<device>.json and the refine_speed block of docs/performance.md.
"""
from __future__ import annotations

import argparse
import hashlib
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


def loop_hausdorff(a, b, radius: int):
    """The naive reading: one shifted comparison per window offset, ~2 (2r+1)^2 kernel launches."""
    import torch

    a, b = a.float(), b.float()
    n, _, h, w = a.shape
    pad = (radius,) * 4
    a_pad, b_pad = (torch.nn.functional.pad(x, pad, mode="replicate") for x in (a, b))
    a_to_b = torch.full((n, h, w), float("inf"), device=a.device)
    b_to_a = torch.full((n, h, w), float("inf"), device=a.device)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            a_to_b = torch.minimum(a_to_b, (a - b_pad[:, :, dy : dy + h, dx : dx + w]).pow(2).sum(1))
            b_to_a = torch.minimum(b_to_a, (b - a_pad[:, :, dy : dy + h, dx : dx + w]).pow(2).sum(1))
    return torch.maximum(a_to_b, b_to_a).sqrt()


def naive_refiner(model, config):
    """G4Seg as first read: everything recomputed per click, RGB decoded at full size by the VAE."""
    import torch

    from g4seg_core.method.refiner import G4SegRefiner

    class NaiveRefiner(G4SegRefiner):
        def refine_classes(self, image, prompts):  # one class at a time
            return {label: self.refine(image, prompt, label) for label, prompt in prompts.items()}

        def refine_regions(self, image, items):
            self.clear_caches()  # no caches: every click is cold, the image hashed to name it
            self.set_image(image, hashlib.sha1(image.tobytes()).hexdigest())
            return super().refine_regions(image, items)

        def to_space(self, x0):
            rgb = self.model.decode_latents(x0, fast=False)  # the full VAE, at the working size
            return torch.nn.functional.interpolate(rgb, size=(self.signal_side,) * 2, mode="area")

        def distance(self, generated, reference, radius):
            return loop_hausdorff(generated, reference, radius)

    refiner = NaiveRefiner(model, config)
    refiner.space = "rgb"
    return refiner


def measure_one(config_dir: str, device: str, dtype_name: str, size: int, iterations: int, naive: bool) -> dict:
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
    images = iter([(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(8)])
    mask = np.zeros((size, size), bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    nudged = np.roll(mask, size // 32, axis=1)
    quarters = {}
    for k, (y, x) in zip(("cat", "dog", "bird"), ((0, 0), (0, size // 2), (size // 2, size // 4))):
        m = np.zeros((size, size), bool)
        m[y + size // 16 : y + size // 2 - size // 16, x + size // 16 : x + size // 2 - size // 16] = True
        quarters[k] = m

    text = model.encode_text(["a photograph of a cat"])
    z = model.noise((1, 4, size // 8, size // 8), seed=0)
    pixels = torch.zeros(1, 3, size, size)
    model.predict_x0(z, 100, text)  # warm-up: first calls allocate
    model.encode_image(pixels)
    model.decode_latents(z)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    unet = timed(lambda: model.predict_x0(z, 100, text), repeat=2)
    row = {"device": device, "dtype": dtype_name, "working_size": size, "iterations": iterations,
           "unet_call_s": unet, "vae_encode_s": timed(lambda: model.encode_image(pixels)),
           "vae_decode_s": timed(lambda: model.decode_latents(z, fast=False)),
           "fast_decode_s": timed(lambda: model.decode_latents(z), repeat=2)}

    def config(space):
        return RefinerConfig(working_size=size, iterations=iterations, early_stop=False, discrepancy_space=space,
                             roi=False)

    for space in ("auto", "latent"):
        refiner = G4SegRefiner(model, config(space))
        refiner.refine(next(images), Prompt(mask=mask), "cat")  # the class's text is cached from here on
        image = next(images)
        refiner.set_image(image, "cold")
        row[f"cold_{space}_s"] = timed(lambda: refiner.refine(image, Prompt(mask=mask), "cat"))
        passes = []
        row[f"warm_{space}_s"] = timed(lambda: passes.append(refiner.refine_trace(image, Prompt(mask=nudged), "cat").passes),
                                       repeat=2)
        row[f"warm_{space}_passes"] = passes[-1]
        row[f"warm_{space}_over_unet_calls"] = row[f"warm_{space}_s"] / (max(1, passes[-1]) * unet)
    row["space_auto"] = G4SegRefiner(model, config("auto")).space
    row["cold_minus_warm_over_encode_plus_reference"] = (row["cold_auto_s"] - row["warm_auto_s"]) / (
        row["vae_encode_s"] + unet)

    # Three classes of one image: one batch per iteration against one class at a time (both cold).
    refiner = G4SegRefiner(model, config("auto"))
    refiner.refine_classes(next(images), {k: Prompt(mask=m) for k, m in quarters.items()})  # texts cached
    one, batch = next(images), next(images)

    def one_by_one():
        refiner.set_image(one, "one-by-one")
        for k, m in quarters.items():
            refiner.refine(one, Prompt(mask=m), k)

    row["three_classes_one_by_one_s"] = timed(one_by_one)
    refiner.set_image(batch, "batched")
    row["three_classes_batched_s"] = timed(lambda: refiner.refine_classes(batch, {k: Prompt(mask=m) for k, m in quarters.items()}))
    row["batched_speedup"] = row["three_classes_one_by_one_s"] / row["three_classes_batched_s"]

    if naive:
        slow = naive_refiner(model, config("rgb"))
        slow.refine(next(images), Prompt(mask=mask), "cat")
        image = next(images)
        row["naive_click_s"] = timed(lambda: slow.refine(image, Prompt(mask=nudged), "cat"))
        row["speedup_over_naive"] = row["naive_click_s"] / row["warm_auto_s"]

    if device.startswith("cuda"):
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        row["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def render(rows: list[dict], when: str, where: str, config_dir: str) -> str:
    f = lambda r, k: f"{r[k]:.2f}" if k in r else "n/a"  # noqa: E731
    lines = [
        f"Measured {when} on {where} by `python benchmarks/refine_speed.py`, full-size SD 2.1-base architecture "
        f"with random weights and TAESD's architecture as the fast decoder (configs: `{Path(config_dir).name}`), "
        "a square image refined whole (no crop), early stop off. Times in seconds; a *warm* refine is a second "
        "shape on the same image, a *cold* one the first. The default space (`auto`) is "
        f"{rows[0]['space_auto']} here (a fast decoder is loaded).",
        "",
        "| device | dtype | size | UNet call | VAE encode | VAE decode | fast decode | cold (default) | warm (default) "
        "| warm / its UNet calls | cold (latent) | warm (latent) | naive click | speed-up over naive | 3 classes: one by one "
        "| 3 classes: batched | batch speed-up | peak GiB |",
        "|" + "---|" * 18,
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['dtype']} | {r['working_size']} | {f(r, 'unet_call_s')} | {f(r, 'vae_encode_s')} | "
            f"{f(r, 'vae_decode_s')} | {f(r, 'fast_decode_s')} | {f(r, 'cold_auto_s')} | {f(r, 'warm_auto_s')} | "
            f"{f(r, 'warm_auto_over_unet_calls')} ({r['warm_auto_passes']} passes) | {f(r, 'cold_latent_s')} | "
            f"{f(r, 'warm_latent_s')} | {f(r, 'naive_click_s')} | {f(r, 'speedup_over_naive')} | "
            f"{f(r, 'three_classes_one_by_one_s')} | {f(r, 'three_classes_batched_s')} | {f(r, 'batched_speedup')} | "
            f"{r['peak_memory_gib']:.1f} |")
    lines += ["", f"{rows[0]['iterations']} iterations. The naive reading: no caches, a full-size VAE decode every "
              "iteration, the local Hausdorff distance as a double loop, classes one at a time. Targets: warm / its "
              "UNet calls <= 1.15; >= 3x faster than the naive reading at 512; >= 1.8x for 3 classes batched."]
    lines += ["", *click_costs(rows)]
    return "\n".join(lines)


def click_costs(rows: list[dict], budget_s: float = 5.0) -> list[str]:
    """What one click (a warm refine in the default space) costs per dtype, and where it fits the budget."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = sorted((r for r in rows if r["dtype"] == dtype), key=lambda r: r["working_size"])
        costs = ", ".join(f"{r['warm_auto_s']:.1f} s at {r['working_size']}" for r in mine)
        fits = [r["working_size"] for r in mine if r["warm_auto_s"] <= budget_s]
        verdict = (f"at most {budget_s:.0f} s at working size {max(fits)} and below (of the sizes measured)" if fits
                   else f"over {budget_s:.0f} s at every size measured")
        out.append(f"- {mine[0]['device']} {dtype}: a click (warm refine, default space) costs {costs}; {verdict}.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="diffusers folder with configs + tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="bfloat16:512,bfloat16:384,bfloat16:256", help="comma-separated dtype:size pairs")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--naive-sizes", default="512", help="sizes at which the naive reading is measured too")
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
    naive_sizes = {int(s) for s in args.naive_sizes.split(",") if s}
    if args.one:
        dtype, size = args.one.split(":")
        print(json.dumps(measure_one(args.config_dir, args.device, dtype, int(size), args.iterations,
                                     int(size) in naive_sizes)))
        return 0
    rows = []
    for run in args.runs.split(","):
        print(f"measuring {args.device} {run} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", run, "--device", args.device, "--config-dir",
                              args.config_dir, "--iterations", str(args.iterations), "--naive-sizes", args.naive_sizes],
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
