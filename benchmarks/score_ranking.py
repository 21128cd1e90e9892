"""Does the backend's score rank masks by quality? Real photos, the classic engine (GrabCut).

For each Weizmann Horse photo (the `test` split, shrunk to at most --size pixels on its longer
side) and each coarse input (a loose box, a rough polygon), the classic engine refines the input
as the backend would; the mask's IoU with the hand-made mask is its quality. Reported: Spearman's
rank correlation between IoU and the score the backend sends (`g4seg_core.edges.boundary_certainty`)
and between IoU and the engine's own confidence (`RefineResult.score`, what the backend sent
before); and the mean IoU of the quarter of masks a reviewer would look at first (lowest score)
against the rest.

    python benchmarks/score_ranking.py --data /work/shared/data/weizmann_horse --count 80
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, machine, write_json  # noqa: E402

from g4seg_core.edges import boundary_certainty  # noqa: E402
from g4seg_core.engines.factory import create_engine  # noqa: E402
from g4seg_core.evaluation.coarse import make_prompt, parse_coarse_item  # noqa: E402
from g4seg_core.evaluation.data import WeizmannDataset  # noqa: E402

INPUTS = ("box:10", "polygon:8")


def shrink(image: np.ndarray, mask: np.ndarray, size: int):
    scale = size / max(mask.shape)
    if scale >= 1:
        return image, mask
    dims = (round(mask.shape[1] * scale), round(mask.shape[0] * scale))
    return (cv2.resize(image, dims, interpolation=cv2.INTER_AREA),
            cv2.resize(mask.astype(np.uint8), dims, interpolation=cv2.INTER_NEAREST).astype(bool))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the Weizmann Horse folder (rgb/, figure_ground/)")
    parser.add_argument("--count", type=int, default=80, help="photos of the test split, from the first")
    parser.add_argument("--size", type=int, default=256, help="longer side the photos are shrunk to")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "score_ranking.json")
    args = parser.parse_args(argv)

    dataset = WeizmannDataset(args.data, "test")
    engine = create_engine("classic").engine
    rows = []
    started = time.perf_counter()
    for index in range(min(args.count, len(dataset))):
        sample = dataset.load(index)
        image, truth = shrink(sample.image, sample.objects[0].mask, args.size)
        for item in INPUTS:
            spec = parse_coarse_item(item)
            prompt = make_prompt(spec, truth, np.random.default_rng(index))
            refined = engine.refine(image, prompt, "horse")
            iou = float((refined.mask & truth).sum() / max(1, (refined.mask | truth).sum()))
            rows.append({"id": sample.id, "input": spec.name or item, "iou": iou,
                         "score": boundary_certainty(image, refined.probability, refined.mask),
                         "engine_score": refined.score})
    seconds = time.perf_counter() - started

    ious = np.array([r["iou"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    engine_scores = np.array([r["engine_score"] for r in rows])
    first = scores <= np.quantile(scores, 0.25)
    summary = {
        "masks": len(rows), "photos": min(args.count, len(dataset)), "inputs": list(INPUTS), "size": args.size,
        "engine": engine.version, "machine": machine(), "seconds": round(seconds, 1),
        "spearman_iou_score": round(float(spearmanr(ious, scores).statistic), 3),
        "spearman_iou_engine_score": (None if np.ptp(engine_scores) == 0
                                      else round(float(spearmanr(ious, engine_scores).statistic), 3)),
        "engine_score_distinct_values": int(len(np.unique(engine_scores))),
        "mean_iou_lowest_quarter_by_score": round(float(ious[first].mean()), 3),
        "mean_iou_rest": round(float(ious[~first].mean()), 3),
        "rows": rows,
    }
    write_json(summary, args.out)
    print({k: v for k, v in summary.items() if k != "rows"})


if __name__ == "__main__":
    main()
