"""Slow clients against the backend: gunicorn's plain `gthread` worker beside `HeadFirstWorker`.

For each worker class, `g4seg serve`'s gunicorn settings (classic engine, G4SEG_THREADS threads)
run in a subprocess; then
  - half-open: 2x the thread count of connections that send half a request line or header and stop;
  - slowloris: many connections that drip one header byte every 0.5 s and never end the head;
and /health is timed during each (10 s at most). Results go to benchmarks/results/slow_clients.json
and the `slow-clients` block of docs/operators.md.

    .venv/bin/python benchmarks/slow_clients.py [--threads 8] [--slowloris 200]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, replace_block, write_json  # noqa: E402

WORKERS = {"gthread": "gthread", "HeadFirstWorker": "backend.server.HeadFirstWorker"}


def serve(worker_class: str, port: int) -> None:
    """The subprocess: `g4seg serve`'s options with another worker class."""
    from gunicorn.app.base import BaseApplication

    from backend.commands.serve import gunicorn_options
    from backend.settings import Settings

    settings = Settings.from_env(host="127.0.0.1", port=port, engine="classic")

    class Server(BaseApplication):
        def load_config(self):
            for key, value in gunicorn_options(settings).items():
                self.cfg.set(key, value)
            self.cfg.set("worker_class", worker_class)
            self.cfg.set("accesslog", None)

        def load(self):
            from backend.app import create_app

            return create_app(settings)

    Server().run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_seconds(url: str, limit: float = 10.0) -> float | None:
    started = time.monotonic()
    try:
        requests.get(url + "/health", timeout=limit).raise_for_status()
    except requests.RequestException:
        return None
    return round(time.monotonic() - started, 3)


def measure(worker: str, threads: int, slowloris: int) -> dict:
    port = free_port()
    env = dict(os.environ, G4SEG_THREADS=str(threads), G4SEG_ENGINE="classic", PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, __file__, "--serve", WORKERS[worker], str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while health_seconds(url, 1) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{worker}: the server did not start")
            time.sleep(0.3)
        out = {"idle_health_s": health_seconds(url)}
        half_open = []
        for index in range(2 * threads):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le" if index % 2 else b"GET /heal")
            half_open.append(sock)
        time.sleep(0.5)
        out["half_open_connections"] = len(half_open)
        out["half_open_health_s"] = health_seconds(url)
        for sock in half_open:
            sock.close()
        time.sleep(1)
        drips = []
        for _ in range(slowloris):
            try:
                drips.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        stop = threading.Event()

        def drip():
            while not stop.is_set():
                for sock in drips:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
                stop.wait(0.5)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        samples = []
        for _ in range(4):
            time.sleep(1)
            samples.append(health_seconds(url))
        stop.set()
        dripper.join(5)
        for sock in drips:
            sock.close()
        out["slowloris_connections"] = len(drips)
        out["slowloris_health_s"] = samples
        return out
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--serve", nargs=2, metavar=("WORKER_CLASS", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    results = {"machine": machine(), "threads": args.threads,
               "workers": {worker: measure(worker, args.threads, args.slowloris) for worker in WORKERS}}
    write_json(results, ROOT / "benchmarks" / "results" / "slow_clients.json")

    def shown(value):
        return "no answer in 10 s" if value is None else f"{value:.3f} s"

    lines = [f"Measured by `benchmarks/slow_clients.py` ({results['machine']}; classic engine, "
             f"{args.threads} threads, one worker): /health's answer time.", "",
             "| worker class | idle | 2x threads half-open connections | slowloris, each second for 4 s |",
             "|---|---|---|---|"]
    for worker, row in results["workers"].items():
        lines.append(f"| `{worker}` | {shown(row['idle_health_s'])} | {shown(row['half_open_health_s'])} "
                     f"({row['half_open_connections']}) | {', '.join(shown(v) for v in row['slowloris_health_s'])} "
                     f"({row['slowloris_connections']} connections) |")
    replace_block("slow-clients", "\n".join(lines), ROOT / "docs" / "operators.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
