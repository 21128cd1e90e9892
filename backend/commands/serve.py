"""`g4seg serve`: the Label Studio ML backend under gunicorn (port 9090 by default).

Settings come from the environment (docs/operators.md); the flags here override the few that
are handy on a command line. Each gunicorn worker process loads the engine once, when it starts.
One worker is the default: a worker holds a whole model, and its threads share it.

The write-back queue's consumer runs inside the workers, not in the master: a job refines, so it
needs a loaded model, which only the workers hold (and the master forks them, so it keeps no
threads or connections). Every worker with a ready engine competes for the queue's lease; the one
that holds it runs the jobs, one at a time, and when it dies (a crash, kill -9, a restart) the
lease passes to another worker or to its replacement, which first puts back the job that was
running. One consumer at a time plus a check of Label Studio before each write means that two
workers and a restart never write one prediction twice (backend/jobs.py).
"""
from __future__ import annotations

import logging

from backend.settings import Settings
from g4seg_core.cli.common import ENGINE_HELP
from g4seg_core.engines.factory import ENGINE_CHOICES
from g4seg_core.errors import UserError

HELP = "Run the Label Studio ML backend (gunicorn; settings from the environment, port 9090 by default)."


def add_arguments(parser) -> None:
    parser.add_argument("--host", help="address to listen on (G4SEG_HOST; default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (PORT; default 9090)")
    parser.add_argument("--workers", type=int, help="worker processes, each with its own model (G4SEG_WORKERS; default 1)")
    parser.add_argument("--threads", type=int, help="request threads per worker (G4SEG_THREADS; default 8)")
    parser.add_argument("--engine", type=str.lower, choices=ENGINE_CHOICES, metavar="ENGINE",
                        help=f"G4SEG_ENGINE; {ENGINE_HELP}")
    parser.add_argument("--model", help="diffusers folder or hub id of the weights (G4SEG_MODEL)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (G4SEG_DEVICE)")
    parser.add_argument("--dtype", help="auto, float32, bfloat16, float16 (G4SEG_DTYPE)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (G4SEG_LOG_LEVEL; default INFO)")


def gunicorn_options(settings: Settings) -> dict:
    from backend.server import HeadFirstWorker

    HeadFirstWorker.header_timeout = settings.header_timeout  # the workers fork with it
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        # gthread with request heads read in its event loop: threads let /health and immediate
        # answers through while a refinement runs, and slow clients hold none (backend/server.py).
        "worker_class": "backend.server.HeadFirstWorker",
        "threads": settings.threads,
        "timeout": settings.timeout,
        "graceful_timeout": 30,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "preload_app": False,  # load the model in each worker, after the fork
        "worker_exit": stop_consuming,
    }


def stop_consuming(server, worker) -> None:
    """On shutdown, let the running write-back job finish (up to 20 s) and take no other: the queue keeps them."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("g4seg") if app is not None else None
    if state is not None:
        state.writeback.stop(timeout=20)


def run(args) -> int:
    settings = Settings.from_env(
        host=args.host, port=args.port, workers=args.workers, threads=args.threads,
        engine=args.engine, model=args.model, device=args.device,
        dtype=args.dtype, log_level=args.log_level.upper() if args.log_level else None,
    )
    if settings.port < 1 or settings.workers < 1 or settings.threads < 2:
        raise UserError("--port and --workers must be positive and --threads at least 2")
    if settings.can_write_back:  # a queue that cannot be opened or reached stops the start, in one line
        from backend.jobs import open_queue

        open_queue(settings).close()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # huey logs every job it runs; ours say what each one did
        logging.getLogger("huey").setLevel(logging.WARNING)
    if not settings.auth_enabled:
        logging.getLogger(__name__).warning("BASIC_AUTH_USER/BASIC_AUTH_PASS are not set: the backend accepts "
                                            "requests from anyone who can reach port %d", settings.port)

    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in gunicorn_options(settings).items():
                self.cfg.set(key, value)

        def load(self):
            from backend.app import create_app

            return create_app(settings)

    Server().run()
    return 0
