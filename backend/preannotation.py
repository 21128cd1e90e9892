"""Pre-annotation of a Label Studio project: text-only masks (then G4Seg refinement) uploaded as predictions.

`Preannotator` turns one task image into one Label Studio prediction (brush results, one per class
found); the backend's batch predictions can call it for tasks that hold no rough shape.
`preannotate_project` runs it over a project (or one shard of it): it skips tasks that already
hold a prediction of this model version, reports and skips tasks whose image fails, and uploads
predictions in batches as it goes, so an interrupted run loses nothing already uploaded and a
second run picks up where the first stopped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import httpx
import numpy as np

from backend.ls_format import BrushOutput, FormatError, mask_results
from g4seg_core.engines.base import Engine
from g4seg_core.errors import SettingError, UserError
from g4seg_core.method.textseg import TextSegmenter, config_for, refine_segmentation

log = logging.getLogger(__name__)

MODEL_VERSION_PREFIX = "g4seg-preannotate"


class UploadError(RuntimeError):
    """Label Studio did not take a batch of predictions, even after retries."""


# ---------------------------------------------------------------- one image


class Preannotator:
    """A text-only segmenter and, optionally, a refiner on the same loaded model."""

    def __init__(self, segmenter: TextSegmenter, refiner: Engine | None = None):
        self.segmenter = segmenter
        self.refiner = refiner

    @classmethod
    def for_engine(cls, engine: Engine, method: str = "iseg", settings: dict[str, str] | None = None,
                   refine: bool = True) -> "Preannotator":
        """Pre-annotation on a loaded G4Seg engine's model (no second copy of the weights)."""
        model = getattr(engine, "model", None)
        if model is None:
            raise SettingError(f"pre-annotation needs the Stable Diffusion model; the {engine.name} engine has none")
        return cls(TextSegmenter(model, config_for(method, settings)), engine if refine else None)

    @property
    def model_version(self) -> str:
        """Names the method, the model, its settings and the refinement (with its settings)."""
        version = f"{MODEL_VERSION_PREFIX} {self.segmenter.version}"
        if self.refiner is not None:
            config = getattr(self.refiner, "config", None)
            if config is not None and hasattr(config, "short"):
                size = getattr(self.refiner, "working_size", None) or config.working_size
                settings = replace(config, working_size=size).short()
                version += f" refine {self.refiner.name}:{settings}"
            else:
                version += f" refine {self.refiner.version}"
        return version

    def predict_task(self, task: dict, output: BrushOutput, fetch, labels: list[str] | None = None) -> dict:
        """A prediction for a Label Studio task ({"id", "data"}); `fetch(url, task_id)` gives its image."""
        url = (task.get("data") or {}).get(output.data_key)
        if url is None:
            raise FormatError(f"the task has no data.{output.data_key} (the image the brush tag labels)")
        return self.predict(fetch(url, task["id"]), output, labels)

    def predict(self, image: np.ndarray, output: BrushOutput, labels: list[str] | None = None) -> dict:
        """A prediction for one image: {"result": [brush results], "score", "model_version"}."""
        labels = list(labels or output.labels)
        for label in labels:
            output.check_label(label)
        segmentation = self.segmenter.segment(image, labels)
        if self.refiner is not None:
            segmentation = refine_segmentation(self.refiner, image, segmentation)
        result, scores = [], []
        for label, mask in segmentation.masks.items():
            if mask.any():  # an empty brush region is of no use to the annotator
                score = segmentation.score(label)
                result.extend(mask_results(mask, label, output, score))
                scores.append(score)
        score = float(np.mean(scores)) if scores else 0.0
        return {"result": result, "score": round(score, 4), "model_version": self.model_version}


# ---------------------------------------------------------------- a project


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the tasks whose id % count == index (disjoint, together all tasks)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise SettingError(f"--shard must be i/n (e.g. 0/4), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise SettingError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {text!r}")
        return cls(index, count)

    def owns(self, task_id: int) -> bool:
        return task_id % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Summary:
    total: int = 0  # tasks in the project
    in_shard: int = 0
    done: int = 0  # predictions uploaded
    empty: int = 0  # of those, with no class found (uploaded empty so the task counts as done)
    skipped: int = 0  # already had a prediction of this model version
    failed: list[tuple[int, str]] = field(default_factory=list)  # (task id, reason)
    not_uploaded: int = 0  # computed but not uploaded (interrupted, or Label Studio refused)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def images_per_hour(self) -> float:
        return 3600.0 * self.done / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        head = (f"done {self.done} (of which {self.empty} with no class found), skipped {self.skipped}, "
                f"failed {len(self.failed)}, of {self.in_shard} tasks in this shard ({self.total} in the project); "
                f"{self.seconds:.1f} s, {self.images_per_hour:.0f} images/hour")
        lines = [head]
        lines += [f"failed: task {task_id}: {reason}" for task_id, reason in self.failed]
        if self.not_uploaded:
            lines.append(f"not uploaded: {self.not_uploaded} computed predictions (the next run redoes them)")
        if self.interrupted:
            lines.append("interrupted: what was uploaded stays; run again to continue")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return lines


@dataclass
class _Pending:
    task_id: int
    data: dict
    replaces: list[int]  # ids of this model version's earlier predictions (with --overwrite)


class PredictionUploader:
    """Buffers predictions and imports them in batches (POST /api/projects/{id}/import/predictions)."""

    def __init__(self, client, project_id: int, model_version: str, batch_size: int = 16, retries: int = 4,
                 backoff: float = 1.0):
        self.client, self.project_id, self.model_version = client, project_id, model_version
        self.batch_size, self.retries, self.backoff = batch_size, retries, backoff
        self.buffer: list[tuple[dict, list[int]]] = []
        self.uploaded = 0

    def add(self, prediction: dict, replaces: list[int]) -> None:
        self.buffer.append((prediction, replaces))
        if len(self.buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        from label_studio_sdk import PredictionRequest

        batch = list(self.buffer)
        for attempt in range(self.retries + 1):
            try:
                requests = [PredictionRequest(**p) for p, _ in batch]
                self.client.projects.import_predictions(self.project_id, request=requests)
                break
            except Exception as exc:
                if attempt == self.retries or not _transient(exc):
                    raise UploadError(f"Label Studio did not take {len(batch)} predictions: {_describe(exc)}") from None
                log.warning("uploading %d predictions failed (%s); retrying in %.0f s", len(batch), _describe(exc),
                            self.backoff * 2**attempt)
                time.sleep(self.backoff * 2**attempt)
                # The failed request may have landed before the connection broke: never upload twice.
                batch = [(p, old) for p, old in batch if not self._landed(p["task"], old)]
                if not batch:
                    break
        self.uploaded += len(self.buffer)
        replaced = [pid for _, old in self.buffer for pid in old]
        self.buffer.clear()
        for pid in replaced:  # --overwrite: the new prediction is in, the old one goes
            try:
                self.client.predictions.delete(pid)
            except Exception as exc:
                log.warning("could not delete the replaced prediction %s: %s", pid, _describe(exc))

    def _landed(self, task_id: int, replaces: list[int]) -> bool:
        return bool(set(version_prediction_ids(self.client, task_id, self.model_version)) - set(replaces))


def version_prediction_ids(client, task_id: int, model_version: str) -> list[int]:
    """Ids of the task's predictions made with exactly this model version."""
    return [p.id for p in client.predictions.list(task=task_id) if p.model_version == model_version]


def list_tasks(client, project_id: int) -> list[tuple[int, dict, int]]:
    """(id, data, number of predictions) of every task, data as stored (URIs not resolved)."""
    out = []
    for task in client.tasks.list(project=project_id, fields="task_only", resolve_uri=False, page_size=100):
        out.append((int(task.id), dict(task.data or {}), int(getattr(task, "total_predictions", 0) or 0)))
    return out


def preannotate_project(client, project_id: int, preannotator: Preannotator, fetch, output: BrushOutput,
                        labels: list[str] | None = None, batch_size: int = 16, shard: Shard = Shard(),
                        overwrite: bool = False, progress: bool = True) -> Summary:
    """Pre-annotate the project's tasks in `shard`; `fetch(url, task_id)` returns the image (RGB uint8).

    One task's failure never stops the run. When Label Studio stops taking uploads, the run stops
    and the summary says why; what was uploaded before stays.
    """
    from tqdm import tqdm

    labels = list(labels or output.labels)
    for label in labels:
        output.check_label(label)
    version = preannotator.model_version
    started = time.perf_counter()
    summary = Summary()
    tasks = list_tasks(client, project_id)
    summary.total = len(tasks)
    mine = sorted((t for t in tasks if shard.owns(t[0])), key=lambda t: t[0])
    summary.in_shard = len(mine)

    pending: list[_Pending] = []
    checks = [t for t in mine if t[2] > 0]
    with tqdm(total=len(checks), desc="checking existing predictions", unit="task", disable=not progress or not checks,
              leave=False) as bar:
        have = {}
        for task_id, _, _ in checks:
            have[task_id] = version_prediction_ids(client, task_id, version)
            bar.update(1)
    for task_id, data, _ in mine:
        earlier = have.get(task_id, [])
        if earlier and not overwrite:
            summary.skipped += 1
        else:
            pending.append(_Pending(task_id, data, earlier))

    uploader = PredictionUploader(client, project_id, version, batch_size)
    bar = tqdm(total=len(pending), desc=f"pre-annotating (shard {shard})", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for item in pending:
            try:
                prediction = preannotator.predict_task({"id": item.task_id, "data": item.data}, output, fetch, labels)
            except Exception as exc:  # one task's failure never stops the run
                reason = _describe(exc)
                if not isinstance(exc, UserError):
                    log.debug("task %s failed", item.task_id, exc_info=True)
                summary.failed.append((item.task_id, reason))
                bar.write(f"task {item.task_id}: skipped: {reason}")
            else:
                prediction["task"] = item.task_id
                summary.empty += not prediction["result"]
                uploader.add(prediction, item.replaces)
            bar.update(1)
            bar.set_postfix(uploaded=uploader.uploaded, failed=len(summary.failed), refresh=False)
        uploader.flush()
    except KeyboardInterrupt:
        summary.interrupted = True
        try:
            uploader.flush()  # what is computed is worth keeping
        except (UploadError, KeyboardInterrupt):
            pass
    except UploadError as exc:
        summary.stopped = str(exc)
    finally:
        bar.close()
        summary.done = uploader.uploaded
        summary.not_uploaded = len(uploader.buffer)
        if summary.not_uploaded:  # `empty` counts computed predictions: keep it to the uploaded ones
            summary.empty -= sum(1 for p, _ in uploader.buffer if not p["result"])
        summary.seconds = time.perf_counter() - started
    return summary


def _transient(exc: BaseException) -> bool:
    """Worth retrying: connection trouble, timeouts, 429 and 5xx answers."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    text = f"HTTP {status}: {body}" if isinstance(status, int) else (str(exc) or type(exc).__name__)
    if not isinstance(exc, (UserError, UploadError)) and not isinstance(status, int):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())[:300]
