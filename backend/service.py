"""What the backend does with a Label Studio request: find the rough shapes, fetch the image, refine.

Every way a rough shape reaches the backend ends in `_refine`, which calls the engine and turns
its masks into brush results. The Flask routes (app.py) only parse JSON and map errors to status
codes; the webhook write-back (writeback.py) reuses `refine_annotation`.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np

from backend.fetch import (
    ImageAccessDenied,
    ImageDownloadError,
    ImageDownloadTimeout,
    ImageFetcher,
    ImageNameError,
)
from backend.ls_format import (
    FormatError,
    LabelConfig,
    Region,
    RleTooLarge,
    enclosed_region,
    enclosing_region,
    group_by_label,
    items_digest,
    mask_results,
    note_results,
    parse_label_config,
    parse_region,
    prompt_from_regions,
    renumber_regions,
    rough_items,
    shape_items,
    writeback_region_id,
)
from backend.metrics import Metrics
from backend.settings import Settings
from g4seg_core.cache import LRUCache
from g4seg_core.edges import boundary_certainty
from g4seg_core.engines.factory import EngineStatus
from g4seg_core.errors import ImageError, ImageTooLargeError, SettingError, UserError
from g4seg_core.prompts import edge_notes

log = logging.getLogger(__name__)


class BackendError(Exception):
    """An answer other than 200, with the reason Label Studio (and its operator) will see."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and one-line reason for an expected failure; None for a bug."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, BackendError):
        return exc.status, exc.reason
    if isinstance(exc, ImageAccessDenied):
        return 403, reason
    if isinstance(exc, ImageNameError):
        return 400, reason
    if isinstance(exc, (ImageTooLargeError, RleTooLarge)):
        return 413, reason
    if isinstance(exc, ImageDownloadTimeout):
        return 504, reason
    if isinstance(exc, ImageDownloadError):
        return 502, reason
    if isinstance(exc, ImageError):  # undecodable or unusable image (too small, ...)
        return 422, reason
    if isinstance(exc, UserError):  # malformed JSON shapes, prompts, labels
        return 400, reason
    return None  # a bug: the caller answers 500 and logs the traceback


class EngineHolder:
    """Loads the engine once per process, in a thread, so /health answers while weights load."""

    def __init__(self, loader: Callable[[], EngineStatus]):
        self._loader = loader
        self._done = threading.Event()
        self.state = "loading"
        self.status: EngineStatus | None = None
        self.error: str | None = None

    def start(self, background: bool = True) -> None:
        if background:
            threading.Thread(target=self._load, name="g4seg-engine-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.status = self._loader()
            self.state = "ready"
            log.info("engine ready in %.1f s: %s", time.perf_counter() - started, self.status.engine.version)
            if self.status.warning:
                log.warning("%s %s", "!" * 20, self.status.warning)
        except Exception as exc:  # a failed load is reported by /health and every request
            self.error = " ".join(str(exc).split()) or type(exc).__name__
            self.state = "failed"
            log.error("the engine failed to load: %s", self.error, exc_info=True)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def require(self) -> EngineStatus:
        if self.state == "ready":
            return self.status
        if self.state == "loading":
            raise BackendError(503, "the model is still loading; try again shortly")
        raise BackendError(503, f"the engine failed to load: {self.error}")


class RefineGate:
    """Bounds the refinements running or waiting in this process; the engine runs one at a time.

    A request finding every slot taken waits up to `wait` seconds for one (first come, first
    served), so a burst of clicks is worked off instead of answered 503 at once.
    """

    def __init__(self, capacity: int, wait: float = 0.0, metrics: Metrics | None = None):
        self.capacity = capacity
        self.wait = wait
        self.metrics = metrics
        self._slots = threading.Semaphore(capacity)
        self.engine_lock = threading.Lock()
        self._lock = threading.Lock()
        self.in_use = 0

    @contextmanager
    def slot(self):
        started = time.monotonic()
        got = self._slots.acquire(timeout=self.wait) if self.wait > 0 else self._slots.acquire(blocking=False)
        if self.metrics is not None:
            self.metrics.slot_wait_seconds.observe(time.monotonic() - started)
        if not got:
            if self.metrics is not None:
                self.metrics.busy.inc()
            raise BackendError(503, f"busy: {self.capacity} refinements were running or waiting for "
                                    f"{self.wait:g} s; try again")
        with self._lock:
            self.in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()


Prediction = dict  # {"result": [...], "score": float, "model_version": str}
# Failures of an interactive call that are the annotator's to fix (a shape or click that cannot be
# refined, a label the output tag lacks) or to report (an image that cannot be read or fetched):
# answered with a note the screen shows. Requests that are malformed, refused (403) or too large
# (413) keep their status: they do not come from an annotator's gesture.
NOTE_STATUSES = (400, 422, 502)


class RefineService:
    def __init__(self, settings: Settings, holder: EngineHolder, fetcher: ImageFetcher | None = None):
        self.settings = settings
        self.holder = holder
        self.metrics = Metrics()
        self.fetcher = fetcher or ImageFetcher(settings, self.metrics)
        self.gate = RefineGate(settings.queue_size, settings.slot_wait, self.metrics)
        self.by_shapes = LRUCache(settings.result_cache_size)  # (task id, shapes digest) -> Prediction
        self.by_task = LRUCache(settings.result_cache_size)  # task id -> its text-only pre-annotation
        self._preannotator = None  # text-only masks for tasks without rough shapes (G4SEG_PREANNOTATE)

    # ------------------------------------------------------------ routes

    def model_version(self) -> str:
        return self.holder.require().engine.version

    def setup(self, body) -> dict:
        if not isinstance(body, dict):
            raise FormatError("the request body must be a JSON object")
        if body.get("schema"):
            parse_label_config(body["schema"])  # a project without a brush tag hears why at connection time
        return {"model_version": self.model_version()}

    def predict(self, body) -> dict:
        if not isinstance(body, dict):
            raise FormatError("the request body must be a JSON object")
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise FormatError("the request has no tasks (expected a non-empty list)")
        config = parse_label_config(body.get("label_config"))
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise FormatError("params must be a JSON object")
        context = params.get("context")
        tasks = [_check_task(t) for t in tasks]
        if context is None:
            return {"results": self._predict_tasks(tasks, config)}
        if not isinstance(context, dict):
            raise FormatError("params.context must be a JSON object or null")
        if len(tasks) != 1:
            raise FormatError(f"an interactive request carries one task, this one has {len(tasks)}")
        return {"results": [self._interactive(tasks[0], context.get("result"), config)]}

    def refine_annotation(self, task: dict, annotation: dict, config: LabelConfig, use_gate: bool = False):
        """(prediction, shapes digest) for an annotation's rough shapes; prediction is None when it has none."""
        task = _check_task(task)
        if not isinstance(annotation, dict):
            raise FormatError("the annotation must be a JSON object")
        items = rough_items(annotation.get("result"))
        if not items:
            return None, None
        digest = items_digest(items)
        cached = self.by_shapes.get((task["id"], digest))
        if cached is not None:
            self.metrics.cache_hits.inc()
            return cached, digest
        prediction = self._refine_items(task, items, config, gated=use_gate)
        self._remember(task["id"], digest, prediction)
        return prediction, digest

    # ------------------------------------------------------------ the ways in

    def _predict_tasks(self, tasks: list[dict], config: LabelConfig) -> list[Prediction]:
        """`context: null`: a task being opened, or "retrieve predictions" over a selection.

        Label Studio 1.23 sends both the same way. A task whose latest annotation holds rough shapes
        gets them refined (from the cache when already done); any other task is answered at once
        with its text-only pre-annotation (G4SEG_PREANNOTATE), or nothing. "Nothing" is an empty list for
        that task: Label Studio then stores no prediction, so the task is not marked as predicted
        and "Retrieve Predictions" still asks again later (an empty prediction would block it).
        """
        self.model_version()  # 503 while the model loads: Label Studio stores nothing
        results = []
        for task in tasks:
            annotation = latest_annotation(task)
            try:
                prediction, digest = self.refine_annotation(task, annotation, config, use_gate=True) if annotation \
                    else (None, None)
                if prediction is not None and isinstance(annotation.get("id"), int):
                    # The ids the webhook write-back gives the same refinement: saving then reopening a
                    # task makes Label Studio ask here and send the webhook at once; the write-back sees
                    # these ids on the stored prediction and does not store a second one.
                    prediction = dict(prediction, result=renumber_regions(
                        prediction["result"], lambda n: writeback_region_id(annotation["id"], digest, n)))
            except Exception as exc:
                status = error_status(exc)
                if status is None or status[0] == 503:
                    raise  # busy or not ready: the whole request fails, Label Studio saves nothing
                log.warning("task %s: cannot refine its latest annotation: %s", task["id"], status[1])
                self.metrics.task_errors.inc()
                results.append([])  # stored as no prediction: a later retrieval tries again
                continue
            if prediction is None:
                prediction = self.by_task.get(task["id"])
            if prediction is None and self.settings.preannotate_method:
                try:
                    prediction = self._preannotate(task, config)
                except Exception as exc:
                    status = error_status(exc)
                    if status is None or status[0] == 503:
                        raise
                    log.warning("task %s: cannot pre-annotate: %s", task["id"], status[1])
                    self.metrics.task_errors.inc()
            results.append(prediction if prediction and prediction["result"] else [])
        return results

    def _preannotate(self, task: dict, config: LabelConfig) -> Prediction:
        """Text-only masks (then G4Seg refinement) for a task with no rough shape: the preannotate path."""
        status = self.holder.require()
        if self._preannotator is None:
            from backend.preannotation import Preannotator

            try:
                self._preannotator = Preannotator.for_engine(status.engine, self.settings.preannotate_method,
                                                             refine=self.settings.preannotate_refine)
            except SettingError as exc:
                raise BackendError(409, f"G4SEG_PREANNOTATE is set but {exc}") from None
        output = self._output(config, None)
        image, _ = self._task_image(task, output)
        with self.gate.slot(), self.gate.engine_lock:
            prediction = self._preannotator.predict(image, output)
        self.by_task.put(task["id"], prediction)
        return prediction

    def _interactive(self, task: dict, items, config: LabelConfig) -> Prediction:
        """A shape drawn in the labeling screen (brush, polygon, smart rectangle or keypoint)."""
        if not isinstance(items, list):
            raise FormatError("params.context.result must be a list of regions")
        shapes = shape_items(items)
        if not shapes:
            raise FormatError("the context holds no brush, polygon, rectangle or keypoint region")
        try:
            return self._interactive_shapes(task, shapes, config)
        except UserError as exc:
            status = error_status(exc)
            if status is None or status[0] not in NOTE_STATUSES:
                raise
            # Label Studio 1.23's screen drops an interactive call's error (any non-200, or an
            # "errors" field) without a trace; what it shows is a suggested region, and a region's
            # meta text in its Info panel. So the annotator's own mistakes come back as a note.
            log.info("task %s: interactive request not refined (%d): %s", task["id"], status[0], status[1])
            self.metrics.interactive.labels("notes").inc()
            return {"result": note_results(items, status[1]), "score": 0.0, "model_version": self.model_version(),
                    "error": status[1]}

    def _interactive_shapes(self, task: dict, shapes: list[dict], config: LabelConfig) -> Prediction:
        to_name = _name(shapes[0].get("to_name"))
        image, key = self._task_image(task, self._output(config, to_name))
        height, width = image.shape[:2]
        regions = [parse_region(item, height, width, self.settings.max_image_pixels) for item in shapes]
        saved: list[list[Region]] | None = None
        groups: dict[str, list[Region]] = {}
        for label, group in group_by_label(regions).items():
            out_label = label
            shape = None
            if all(r.kind == "keypoint" for r in group):
                # A click alone: if it lies in a rough shape already saved on the task, refine that shape.
                click = next((r for r in group if r.positive), group[0])
                saved = self._saved_regions(task, height, width) if saved is None else saved
                shape = next((s for s in (enclosing_region(src, *click.point, label) for src in saved) if s), None)
            elif all(r.kind == "rectangle" for r in group):
                # A box alone: if it holds a rough shape already saved on the task, refine that shape
                # within the box (in the screen a click on a saved shape selects it; a box drawn
                # around it is the one gesture that reaches the backend).
                saved = self._saved_regions(task, height, width) if saved is None else saved
                shape = next((s for s in (enclosed_region(src, group, label) for src in saved) if s), None)
            if shape is not None:
                self.metrics.interactive.labels("saved_shapes").inc()  # how often the refine-what-I-drew gesture is used
                group = [shape, *group]
                if label not in self._output(config, to_name, label).labels:
                    out_label = shape.label
            groups.setdefault(out_label, []).extend(group)
        # Not kept for the task: a suggestion the annotator accepts is in the annotation already, and
        # storing it again as a prediction on the next task open would show it twice.
        return self._refine(image, key, groups, config, to_name, gated=True)

    def _refine_items(self, task: dict, items: list[dict], config: LabelConfig, gated: bool) -> Prediction:
        to_name = _name(items[0].get("to_name"))
        image, key = self._task_image(task, self._output(config, to_name))
        height, width = image.shape[:2]
        regions = [parse_region(item, height, width, self.settings.max_image_pixels) for item in items]
        return self._refine(image, key, group_by_label(regions), config, to_name, gated)

    # ------------------------------------------------------------ the common end

    def _output(self, config: LabelConfig, to_name: str | None, label: str | None = None):
        """The tag refined masks go to: brush, or polygon with G4SEG_OUTPUT=polygon (or a project
        whose config has a polygon tag and no brush tag)."""
        return config.output_for(to_name, label, config.output_tool(self.settings.output))

    def _refine(self, image: np.ndarray, key: str, groups: dict[str, list[Region]], config: LabelConfig,
                to_name: str | None, gated: bool) -> Prediction:
        """The engine's masks as a prediction; `gated`: in a refinement slot (requests; not the
        write-back thread, which is one at a time by itself). Images are fetched before: a slow
        download holds a request thread, never a slot."""
        height, width = image.shape[:2]
        outputs = {}
        for label in groups:
            output = self._output(config, to_name, label)
            outputs[label] = output
            output.check_label(label)
        prompts = {label: prompt_from_regions(regions, height, width) for label, regions in groups.items()}
        for label, prompt in prompts.items():
            for note in edge_notes(prompt, height, width):
                log.info("label %r: %s", label, note)
        status = self.holder.require()
        with self.gate.slot() if gated else contextlib.nullcontext(), self.gate.engine_lock, \
                self.metrics.refine_seconds.time():
            status.engine.set_image(image, key)  # the engine's per-image work is cached under this name
            refined = status.engine.refine_classes(image, prompts)
        result, scores = [], []
        for label, outcome in refined.items():
            if outcome.mask.any():  # an empty region is of no use to the annotator
                score = boundary_certainty(image, outcome.probability, outcome.mask)
                result.extend(mask_results(outcome.mask, label, outputs[label], score))
                scores.append(score)
        score = float(np.min(scores)) if scores else 0.0  # a task is as doubtful as its most doubtful mask
        return {"result": result, "score": round(score, 4), "model_version": status.engine.version}

    def _task_image(self, task: dict, output) -> tuple[np.ndarray, str]:
        """The task's image and its name for the engine's per-image caches: the task and the URL
        (a click never hashes the photo)."""
        url = task["data"].get(output.data_key)
        if url is None:
            raise FormatError(f"task {task['id']} has no data.{output.data_key} (the image the brush tag labels)")
        return self.fetcher.fetch(url, task_id=task["id"]), f"task {task['id']}: {url}"

    def _saved_regions(self, task: dict, height: int, width: int) -> list[list[Region]]:
        """Rough shapes saved on the task (annotations and drafts), newest source first."""
        sources = [s for key in ("drafts", "annotations") for s in (task.get(key) or []) if isinstance(s, dict)]
        sources.sort(key=lambda s: str(s.get("updated_at") or s.get("created_at") or ""), reverse=True)
        out = []
        for source in sources:
            regions = []
            try:
                items = rough_items(source.get("result") or [])
            except FormatError:
                continue
            for item in items:
                try:
                    regions.append(parse_region(item, height, width, self.settings.max_image_pixels))
                except UserError as exc:  # a broken saved region is skipped, the click still counts
                    log.info("task %s: skipping a saved region: %s", task["id"], exc)
            out.append(regions)
        return out

    def _remember(self, task_id: int, digest: str, prediction: Prediction) -> None:
        self.by_shapes.put((task_id, digest), prediction)


def latest_annotation(task: dict) -> dict | None:
    annotations = [a for a in (task.get("annotations") or []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                           a["id"] if isinstance(a.get("id"), int) else 0))


def _name(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_task(task) -> dict:
    if not isinstance(task, dict) or not isinstance(task.get("id"), int) or isinstance(task.get("id"), bool):
        raise FormatError("each task needs an integer id")
    if not isinstance(task.get("data"), dict):
        raise FormatError(f"task {task['id']} has no data object")
    return task
