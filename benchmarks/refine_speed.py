"""What a click costs: G4Seg refinement latency on the full-size SD 2.1-base architecture (random weights).

Each measurement runs in a process of its own (peak memory belongs to it alone) and is a *part*:

- default: a refine in the default discrepancy space (`auto`), cold (a new image: VAE encoding and
  reference pass included) and warm (a second shape on the same image: its UNet calls and the
  rest of the loop). Its ratio divides the warm refine by its passes times a bare UNet call
  (the mean of one timed just before and one just after it), and also by the time its own
  (mask-injected) UNet calls took.
- latent: the same in the latent space.
- naive: the reading of the method before issue 11, beside the default in the same process: no
  caches (a click hashes the image, encodes it, runs the reference pass and encodes the text
  again), the per-layer logit range recomputed on every pass, a full-size VAE decode every
  iteration for the RGB discrepancy, the local Hausdorff distance as a double loop over window
  offsets, classes one at a time.
- classes: three classes of one image refined as one batch per iteration against the same three
  one by one (both cold, on images of their own).

Early stop is off, so a refine runs --iterations updates (the signal is evaluated again only when
the mask changed; each part says how many passes ran). The image is refined whole (no crop).
Parts measured later merge into the saved JSON, replacing that part of the same device, dtype
and size, so a long run can be cut into chunks:

    python benchmarks/refine_speed.py --runs bfloat16:512 --parts default,naive
    python benchmarks/refine_speed.py --runs bfloat16:512 --parts classes
    python benchmarks/refine_speed.py --runs float32:256,float32:128 --parts default,latent,classes
    python benchmarks/refine_speed.py --device cuda --runs float16:512 --parts default,latent,naive,classes

Writes benchmarks/results/refine_speed-<device>.json and the refine_speed-<device> block of
docs/performance.md (--render-only rewrites the block from the JSON).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
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

PARTS = ("default", "latent", "naive", "classes")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class UNetClock:
    """Seconds spent inside the model's UNet calls (the refine's own calls, timed as they run;
    bare calls made through the unwrapped method are not counted)."""

    def __init__(self, model, device: str):
        self.seconds = 0.0
        inner = model.predict_x0

        def predict_x0(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(device)
            self.seconds += time.perf_counter() - start
            return out

        model.predict_x0 = predict_x0


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

        def _references_for(self, image, key, items):
            references = super()._references_for(image, key, items)
            for reference in references:
                reference.ranges = {}  # each injected layer measures its own logit range, every pass
            return references

        def to_space(self, x0):
            rgb = self.model.decode_latents(x0, fast=False)  # the full VAE, at the working size
            return torch.nn.functional.interpolate(rgb, size=(self.signal_side,) * 2, mode="area")

        def distance(self, generated, reference, radius):
            return loop_hausdorff(generated, reference, radius)

    refiner = NaiveRefiner(model, config)
    refiner.space = "rgb"
    return refiner


def measure(config_dir: str, device: str, dtype_name: str, size: int, iterations: int, parts: list[str],
            repeat: int) -> dict:
    """One process: the parts asked for, at one dtype and working size."""
    import numpy as np
    import torch

    from benchmarks.random_sd import build_random_sd
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.model import counting
    from g4seg_core.method.refiner import G4SegRefiner
    from g4seg_core.prompts import Prompt

    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    model = build_random_sd(Path(config_dir), device=device, dtype=getattr(torch, dtype_name))
    rng = np.random.default_rng(0)
    images = iter([(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(8)])
    mask = np.zeros((size, size), bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    nudges = [np.roll(mask, size // 32 * (k + 1), axis=1) for k in range(repeat)]
    quarters = {}
    for k, (y, x) in zip(("cat", "dog", "bird"), ((0, 0), (0, size // 2), (size // 2, size // 4))):
        m = np.zeros((size, size), bool)
        m[y + size // 16 : y + size // 2 - size // 16, x + size // 16 : x + size // 2 - size // 16] = True
        quarters[k] = m

    text = model.encode_text(["a photograph of a cat"])
    z = model.noise((1, 4, size // 8, size // 8), seed=0)
    model.predict_x0(z, 100, text)  # warm-up: first calls allocate
    model.decode_latents(z)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    bare = model.predict_x0

    def bare_call():
        return bare(z, 100, text)

    unet = timed(bare_call, device, repeat=2)
    clock = UNetClock(model, device)
    out = {"unet_call_s": unet, "fast_decode_s": timed(lambda: model.decode_latents(z), device, repeat=2)}

    def config(space):
        return RefinerConfig(working_size=size, iterations=iterations, early_stop=False, discrepancy_space=space,
                             roi=False)

    def one_space(space: str) -> dict:
        refiner = G4SegRefiner(model, config(space))
        refiner._text("cat")  # the class's text is known: a cold click is a new image, not a new class
        image = next(images)
        refiner.set_image(image, f"cold-{space}")
        with counting(model) as calls:
            cold = timed(lambda: refiner.refine(image, Prompt(mask=mask), "cat"), device)
        warm, own, passes, ratios = [], [], [], []
        for nudged in nudges:
            # A bare UNet call right before and right after each warm refine: the machine's speed
            # drifts (it is shared), so each refine is divided by calls timed beside it.
            before_call = timed(lambda: bare_call(), device)
            before = clock.seconds
            warm.append(timed(lambda: passes.append(refiner.refine_trace(image, Prompt(mask=nudged), "cat").passes),
                              device))
            own.append(clock.seconds - before)
            beside = (before_call + timed(lambda: bare_call(), device)) / 2
            ratios.append(warm[-1] / (max(1, passes[-1]) * beside))
        warm_s = statistics.median(warm)
        return {"space": refiner.space, "cold_s": cold, "cold_calls": dict(calls), "warm_s": warm_s,
                "warm_runs": len(warm), "passes": passes[-1], "warm_over_unet_calls": statistics.median(ratios),
                "warm_over_own_unet_time": statistics.median(w / max(o, 1e-9) for w, o in zip(warm, own))}

    if "default" in parts or "naive" in parts:
        out["default"] = one_space("auto")
    if "latent" in parts:
        out["latent"] = one_space("latent")
    if "naive" in parts:
        # The full VAE's first calls (timed: the encoder ran in the default part already, the decoder not).
        vae_encode = timed(lambda: model.encode_image(torch.zeros(1, 3, size, size)), device)
        vae_decode = timed(lambda: model.decode_latents(z, fast=False), device)
        slow = naive_refiner(model, config("rgb"))
        image = next(images)
        with counting(model) as calls:
            naive = timed(lambda: slow.refine(image, Prompt(mask=nudges[0]), "cat"), device)
        out["naive"] = {"naive_click_s": naive, "calls": dict(calls), "vae_encode_s": vae_encode,
                        "vae_decode_s": vae_decode,
                        "speedup_over_naive": naive / out["default"]["warm_s"],
                        "default": {k: out["default"][k] for k in ("warm_s", "cold_s", "passes")}}
    if "classes" in parts:
        refiner = G4SegRefiner(model, config("auto"))
        for label in quarters:
            refiner._text(label)
        one, batch = next(images), next(images)

        def one_by_one():
            refiner.set_image(one, "one-by-one")
            for k, m in quarters.items():
                refiner.refine(one, Prompt(mask=m), k)

        with counting(model) as single_calls:
            single = timed(one_by_one, device)
        refiner.set_image(batch, "batched")
        with counting(model) as batch_calls:
            batched = timed(lambda: refiner.refine_classes(batch, {k: Prompt(mask=m) for k, m in quarters.items()}),
                            device)
        out["classes"] = {"one_by_one_s": single, "one_by_one_calls": dict(single_calls), "batched_s": batched,
                          "batched_calls": dict(batch_calls), "batched_speedup": single / batched}

    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.update(started=started, load_before=load_before, load_after=os.getloadavg()[0],
               threads=torch.get_num_threads())
    return out


def merge(saved: dict, device: str, dtype: str, size: int, iterations: int, parts: list[str], out: dict) -> None:
    """Put one process's parts into the saved rows: each part keeps the process-wide figures
    (bare UNet call, load, peak memory) of the process that measured it."""
    rows = saved.setdefault("rows", [])
    key = (device, dtype, size)
    row = next((r for r in rows if (r["device"], r["dtype"], r["working_size"]) == key), None)
    if row is None:
        row = {"device": device, "dtype": dtype, "working_size": size, "parts": {}}
        rows.append(row)
    context = {k: out[k] for k in ("unet_call_s", "fast_decode_s", "peak_memory_gib", "started", "load_before",
                                   "load_after", "threads")}
    measured = [p for p in PARTS if p in out and (p in parts or p == "default")]
    for part in measured:
        row["parts"][part] = {**out[part], **context, "iterations": iterations,
                              "same_process_as": [p for p in measured if p != part]}
    rows.sort(key=lambda r: (r["device"], r["dtype"], -r["working_size"]))


def render(saved: dict) -> str:
    def f(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"Measured on {saved['machine']} by `python benchmarks/refine_speed.py` (its docstring gives the commands), "
        "full-size SD 2.1-base architecture with random weights (a random weight costs what a trained one does) and "
        "TAESD's architecture as the fast decoder; a square image refined whole (no crop), 3 iterations, early stop "
        "off. Times in seconds. Each part ran in a process of its own (the date says when); every ratio divides two "
        "figures of one process.",
        "",
        "**The default space** (`auto`: RGB through the fast decoder). *Cold*: a new image (VAE encoding and "
        "reference pass included); *warm*: a second shape on the same image. *Warm / its UNet calls*: the warm "
        "refine over its passes times a bare UNet call (the mean of one timed just before and one just after "
        "it: the shared machine's speed drifts); *warm / own UNet time*: over the time its own (mask-injected) "
        "UNet calls took, as they ran. *Bare UNet call*: at the start of the process.",
        "",
        "| device | dtype | size | bare UNet call | fast decode | cold | warm (passes) | warm / its UNet calls "
        "| warm / own UNet time | cold (latent) | warm (latent) | warm (latent) / its UNet calls | peak GiB | when |",
        "|" + "---|" * 14,
    ]
    for r in saved["rows"]:
        d, lat = r["parts"].get("default"), r["parts"].get("latent")
        if d is None:
            continue
        lines.append(
            f"| {r['device']} | {r['dtype']} | {r['working_size']} | {f(d['unet_call_s'])} | {f(d['fast_decode_s'])} "
            f"| {f(d['cold_s'])} | {f(d['warm_s'])} ({d['passes']}) | {f(d['warm_over_unet_calls'])} "
            f"| {f(d['warm_over_own_unet_time'])} | {f(lat and lat['cold_s'])} | {f(lat and lat['warm_s'])} "
            f"| {f(lat and lat['warm_over_unet_calls'])} | {f(d['peak_memory_gib'], 1)} | {d['started']} |")
    naive = [r for r in saved["rows"] if "naive" in r["parts"]]
    if naive:
        lines += ["", "**Against the naive reading**, in the same process as the default-space row above it was "
                  "measured with (warm click in the default space vs a naive click: no caches, the image hashed, "
                  "logit ranges recomputed every pass, a full-size VAE decode every iteration, a double-loop "
                  "Hausdorff distance).", "",
                  "| device | dtype | size | warm (default) | cold (default) | naive click | speed-up (warm) "
                  "| speed-up (cold) | VAE encode | VAE decode | when |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in naive:
            n = r["parts"]["naive"]
            d = n["default"]  # the default-space figures of the naive part's own process
            lines.append(f"| {r['device']} | {r['dtype']} | {r['working_size']} | {f(d['warm_s'])} | {f(d['cold_s'])} "
                         f"| {f(n['naive_click_s'])} | {f(n['naive_click_s'] / d['warm_s'], 1)}x "
                         f"| {f(n['naive_click_s'] / d['cold_s'], 1)}x | {f(n['vae_encode_s'])} "
                         f"| {f(n['vae_decode_s'])} | {n['started']} |")
    classes = [r for r in saved["rows"] if "classes" in r["parts"]]
    if classes:
        lines += ["", "**Three classes of one image**, cold: one batch of three per UNet call against one class at a "
                  "time (the same number of images through the UNet).", "",
                  "| device | dtype | size | one by one | batched | speed-up | UNet calls: one by one / batched | when |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in classes:
            c = r["parts"]["classes"]
            lines.append(f"| {r['device']} | {r['dtype']} | {r['working_size']} | {f(c['one_by_one_s'])} "
                         f"| {f(c['batched_s'])} | {f(c['batched_speedup'])}x | {c['one_by_one_calls'].get('unet', 0)} / "
                         f"{c['batched_calls'].get('unet', 0)} | {c['started']} |")
    lines += ["", *click_costs(saved["rows"]), "", *targets(saved["rows"])]
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """Issue 11's targets against the rows measured: met or not, row by row."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    out = ["Issue 11's targets, row by row:"]
    for r in rows:
        where = f"{r['device']} {r['dtype']} {r['working_size']}"
        parts = r["parts"]
        if "default" in parts:
            ratio = parts["default"]["warm_over_unet_calls"]
            out.append(f"- {where}: warm / its UNet calls (default space) {ratio:.2f}, target <= 1.15: {verdict(ratio <= 1.15)}")
        if "naive" in parts:
            n = parts["naive"]
            speedup = n["naive_click_s"] / n["default"]["warm_s"]
            out.append(f"- {where}: {speedup:.1f}x faster than the naive reading, target >= 3x: {verdict(speedup >= 3)}")
        if "classes" in parts:
            speedup = parts["classes"]["batched_speedup"]
            out.append(f"- {where}: 3 classes batched {speedup:.2f}x faster than one by one, target >= 1.8x: "
                       f"{verdict(speedup >= 1.8)}")
    return out


def _passes(n: int) -> str:
    return f"{n} pass" if n == 1 else f"{n} passes"


def click_costs(rows: list[dict], budget_s: float = 5.0) -> list[str]:
    """What one click (a warm refine in the default space) costs per dtype, and where it fits the budget."""
    out = []
    for device, dtype in dict.fromkeys((r["device"], r["dtype"]) for r in rows if "default" in r["parts"]):
        mine = sorted((r for r in rows if (r["device"], r["dtype"]) == (device, dtype) and "default" in r["parts"]),
                      key=lambda r: r["working_size"])
        costs = ", ".join(f"{r['parts']['default']['warm_s']:.1f} s at {r['working_size']} "
                          f"({_passes(r['parts']['default']['passes'])})" for r in mine)
        fits = [r["working_size"] for r in mine if r["parts"]["default"]["warm_s"] <= budget_s]
        verdict = (f"at most {budget_s:.0f} s at working size {max(fits)} and below (of the sizes measured)" if fits
                   else f"over {budget_s:.0f} s at every size measured")
        out.append(f"- {device} {dtype}: a click (warm refine, default space, up to 3 passes: a pass runs only "
                   f"when the mask changed) costs {costs}; {verdict}.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="diffusers folder with configs + tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="bfloat16:512", help="comma-separated dtype:size pairs, one process each")
    parser.add_argument("--parts", default="default,latent,naive,classes",
                        help=f"comma-separated, measured in one process per run: {', '.join(PARTS)}")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="warm refines per space (the median is reported)")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the docs block from the saved results JSON, measuring nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: dtype:size measured in this process
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results" / f"refine_speed-{args.device.split(':')[0]}.json"
    if args.render_only:
        replace_block(f"refine_speed-{results.stem.split('-')[-1]}", render(json.loads(results.read_text())))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: choose among {', '.join(PARTS)}")
    if args.one:
        dtype, size = args.one.split(":")
        print(json.dumps(measure(args.config_dir, args.device, dtype, int(size), args.iterations, parts, args.repeat)))
        return 0
    saved = json.loads(results.read_text()) if results.exists() else {}
    if "rows" in saved and saved.get("machine") != machine():
        saved = {}  # figures of another machine are not merged with these
    saved["machine"] = machine()
    for run in args.runs.split(","):
        print(f"measuring {args.device} {run}: {', '.join(parts)} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", run, "--device", args.device, "--config-dir",
                              args.config_dir, "--iterations", str(args.iterations), "--parts", ",".join(parts),
                              "--repeat", str(args.repeat)], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(measured), file=sys.stderr)
        dtype, size = run.split(":")
        merge(saved, args.device, dtype, int(size), args.iterations, parts, measured)
        write_json(saved, results)  # after each run: a chunk cut short keeps what it measured
    if not args.no_doc:
        replace_block(f"refine_speed-{args.device.split(':')[0]}", render(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
