"""The Label Studio ML backend protocol on Flask: /health, /setup, /predict, /webhook, /metrics.

Thin on purpose: each route parses JSON, calls the service, and turns failures into a JSON error
with a one-line reason. `create_app` loads the engine once per process (in the background, so
/health answers while weights load); `g4seg serve` runs it under gunicorn.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from types import SimpleNamespace
from typing import Callable

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.fetch import ImageFetcher
from backend.jobs import QueueCollector
from backend.metrics import CONTENT_TYPE_LATEST
from backend.server import read_body
from backend.service import BackendError, EngineHolder, RefineService, error_status
from backend.settings import Settings
from backend.writeback import WriteBack
from g4seg_core.engines.factory import EngineStatus, create_engine

log = logging.getLogger(__name__)

OPEN_ROUTES = {"/health"}  # container health checks carry no credentials


def default_engine_loader(settings: Settings) -> Callable[[], EngineStatus]:
    return lambda: create_engine(settings.engine, model=settings.model, device=settings.device,
                                 dtype=settings.dtype, settings=settings.refiner_settings)


def create_app(
    settings: Settings | None = None,
    engine_loader: Callable[[], EngineStatus] | None = None,
    fetcher: ImageFetcher | None = None,
    client_factory: Callable | None = None,
    load_in_background: bool = True,
) -> Flask:
    settings = settings or Settings.from_env()
    holder = EngineHolder(engine_loader or default_engine_loader(settings))
    service = RefineService(settings, holder, fetcher)
    writeback = WriteBack(settings, service, client_factory)
    app = Flask("g4seg_backend")
    app.extensions["g4seg"] = SimpleNamespace(settings=settings, holder=holder, service=service, writeback=writeback)
    metrics = service.metrics
    metrics.gauge("g4seg_engine_ready", "1 when the engine is loaded and serving", lambda: holder.state == "ready")
    metrics.gauge("g4seg_degraded", "1 while image downloads from Label Studio fail or stall",
                  lambda: service.fetcher.health.problem() is not None)
    metrics.gauge("g4seg_refinement_slots", "refinements that may run or wait at once (G4SEG_QUEUE_SIZE)",
                  lambda: service.gate.capacity)
    metrics.gauge("g4seg_refinements_in_slots", "refinements running or waiting for the engine now",
                  lambda: service.gate.in_use)
    metrics.registry.register(QueueCollector(lambda: writeback.queue))  # the write-back queue's gauges

    @app.after_request
    def count(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(rule, str(response.status_code)).inc()
        return response

    @app.before_request
    def check_auth():
        if not settings.auth_enabled or request.path in OPEN_ROUTES:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
            and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
        )
        if ok:
            return None
        response = jsonify(error="authentication required (HTTP basic auth)")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="g4seg"'
        return response

    @app.get("/health")
    @app.get("/")
    def health():
        body = {"status": {"ready": "UP", "loading": "LOADING", "failed": "FAILED"}[holder.state],
                "model_class": "G4Seg refiner", "requested_engine": settings.engine}
        problem = service.fetcher.health.problem()
        if problem:  # still 200: the engine serves, and images already fetched or on disk still work
            body["degraded"] = problem
            if holder.state == "ready":
                body["status"] = "DEGRADED"
        if holder.status is not None:
            body.update(engine=holder.status.engine.name, model_version=holder.status.engine.version)
            if holder.status.warning:
                body["warning"] = holder.status.warning
        if holder.error:
            body["error"] = holder.error
        if settings.can_write_back:  # jobs waiting, and the dead letters' ids
            try:
                body["queue"] = writeback.queue.health()
            except BackendError as exc:
                body["queue"] = {"error": exc.reason}
        return jsonify(body), 200 if holder.state == "ready" else 503

    @app.post("/setup")
    def setup():
        return jsonify(service.setup(_json_body()))

    @app.post("/predict")
    def predict():
        body = _json_body()
        started = time.perf_counter()
        answer = service.predict(body)
        log.info("/predict: %d task(s), context %s, %.2f s", len(answer["results"]),
                 "null" if not (body.get("params") or {}).get("context") else "given", time.perf_counter() - started)
        return jsonify(answer)

    @app.post("/webhook")
    def webhook():
        return jsonify(writeback.handle(_json_body()))

    @app.get("/versions")
    def versions():
        return jsonify(versions=[service.model_version()])

    @app.get("/metrics")
    def metrics_route():
        return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(Exception)
    def on_error(exc):
        if isinstance(exc, HTTPException):
            status, reason = exc.code or 500, exc.description or exc.name
        else:
            known = error_status(exc)
            if known is None:
                log.exception("internal error on %s", request.path)
                status, reason = 500, f"internal error: {type(exc).__name__}: {exc}"
            else:
                status, reason = known
        if status >= 500 or status == 413:
            log.warning("%s -> %d: %s", request.path, status, reason)
        else:
            log.info("%s -> %d: %s", request.path, status, reason)
        return jsonify(error=reason), status

    holder.start(background=load_in_background)
    writeback.start()
    return app


def _json_body():
    settings = current_app.extensions["g4seg"].settings
    raw = read_body(request.environ, settings.max_request_bytes, settings.body_timeout)
    if not raw:
        raise BackendError(400, "the request body is empty (expected JSON)")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BackendError(400, "the request body is JSON nested too deeply to parse") from None
