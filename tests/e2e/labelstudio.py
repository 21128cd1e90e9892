"""A real Label Studio 1.23.2 for end-to-end tests, and the backend as a real server process.

Label Studio runs from its own virtual environment (it pins its own Django stack), created on
first use: G4SEG_LABEL_STUDIO_VENV, or ~/.cache/g4seg/label-studio-1.23.2. It listens on a free
loopback port with SQLite in a temporary data dir. `LabelStudio` wraps the REST calls tests need
(projects, image import, annotations, ML backends, interactive requests, predictions);
`BackendProcess` runs `g4seg serve` on another free port.

Mind one Label Studio habit: `GET /api/tasks/<id>` asks the ML backend for a prediction when the
task has none (`show_collab_predictions`). Tests that check where a prediction came from read
`/api/predictions?task=<id>` instead.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

LABEL_STUDIO_VERSION = "1.23.2"
USERNAME, PASSWORD = "e2e@g4seg.test", "g4seg-e2e-password"  # the account Label Studio starts with
REPO_ROOT = Path(__file__).resolve().parents[2]


def label_studio_venv() -> Path:
    default = Path.home() / ".cache" / "g4seg" / f"label-studio-{LABEL_STUDIO_VERSION}"
    return Path(os.environ.get("G4SEG_LABEL_STUDIO_VENV") or default)


def ensure_label_studio(venv: Path | None = None) -> Path:
    """The label-studio executable, installing label-studio==1.23.2 into its venv when missing (~75 s)."""
    venv = venv or label_studio_venv()
    exe = venv / "bin" / "label-studio"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions never install into one venv at once
        if exe.exists() and _works(python):
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable if _no_python3() else "python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"label-studio=={LABEL_STUDIO_VERSION}"], check=True, timeout=1800)
        if not (exe.exists() and _works(python)):
            raise RuntimeError(f"label-studio=={LABEL_STUDIO_VERSION} did not install into {venv}")
    return exe


def _works(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import label_studio"], capture_output=True, timeout=120)
    return probe.returncode == 0


def _no_python3() -> bool:
    return shutil.which("python3") is None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None,
             auth=None) -> requests.Response:
    """Poll `url` until it answers 200; fail early if `process` dies (with the end of its log)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}\n{tail(log)}")
        try:
            response = requests.get(url, timeout=2, auth=auth)
            if response.status_code == 200:
                return response
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})\n{tail(log)}")


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class LabelStudio:
    """A running Label Studio and the REST calls the tests make on it."""

    def __init__(self, url: str, token: str, data_dir: Path, local_root: Path, process=None, log: Path | None = None,
                 workdir: Path | None = None):
        self.url = url
        self.token = token
        self.data_dir = data_dir
        self.local_root = local_root
        self.process = process
        self.log = log
        self.workdir = workdir
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {token}"

    @classmethod
    def start(cls, workdir: Path, timeout: float = 240, port: int | None = None, token: str | None = None) -> "LabelStudio":
        exe = ensure_label_studio()
        workdir.mkdir(parents=True, exist_ok=True)
        data_dir, local_root = workdir / "data", workdir / "files"
        data_dir.mkdir(exist_ok=True)
        local_root.mkdir(exist_ok=True)
        port, token = port or free_port(), token or secrets.token_hex(20)
        env = dict(
            os.environ,
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            LABEL_STUDIO_USERNAME=USERNAME,
            LABEL_STUDIO_PASSWORD=PASSWORD,
            LABEL_STUDIO_USER_TOKEN=token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(local_root),
            # A backend on loopback needs both, or registering it answers 403 and no webhook is made.
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
        )
        for leaked in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(leaked, None)
        log = workdir / "label-studio.log"
        process = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/health", timeout, process, log)
            ls = cls(url, token, data_dir, local_root, process, log, workdir)
            wait_for_api = time.monotonic() + 60
            while ls.http.get(f"{url}/api/projects", timeout=10).status_code != 200:
                if time.monotonic() > wait_for_api:
                    raise TimeoutError(f"Label Studio's API does not accept the token\n{tail(log)}")
                time.sleep(0.5)
        except BaseException:
            stop_process(process)
            raise
        return ls

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def start_again(self, timeout: float = 240) -> None:
        """After `stop`: the same Label Studio (data, port, token) back up, as after an outage."""
        again = type(self).start(self.workdir, timeout, port=int(self.url.rsplit(":", 1)[1]), token=self.token)
        self.process = again.process

    # ------------------------------------------------------------ REST

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs):
        response = self.http.request(method, self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)
        if response.status_code not in expect:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def create_project(self, label_config: str, title: str = "g4seg e2e") -> int:
        return self.call("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"]

    def import_images(self, project: int, paths: list[Path]) -> list[int]:
        """Upload image files; one task each (data.image = /data/upload/...). Returns task ids in order."""
        ids = []
        for path in paths:
            with open(path, "rb") as handle:
                answer = self.call("POST", f"/api/projects/{project}/import",
                                   files={"file": (Path(path).name, handle, "image/png")})
            ids.extend(answer["task_ids"] if "task_ids" in answer else [])
        if len(ids) != len(paths):  # older answers carry no ids: read them back in creation order
            tasks = self.call("GET", f"/api/tasks?project={project}&page_size=1000&fields=all")
            tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
            ids = sorted(t["id"] for t in tasks)[-len(paths):]
        return ids

    def import_local_files(self, project: int, paths: list[Path], folder: str) -> list[int]:
        """Copy images into <local-files root>/<folder> and import them through a local-files storage.

        Tasks get data.image = /data/local-files/?d=<folder>/<name>. Returns task ids in `paths` order.
        """
        target = self.local_root / folder
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, target / Path(path).name)
        storage = self.call("POST", "/api/storages/localfiles", json={
            "project": project, "path": str(target), "use_blob_urls": True, "regex_filter": ".*",
            "title": f"e2e {folder}"})
        self.call("POST", f"/api/storages/localfiles/{storage['id']}/sync")
        deadline = time.monotonic() + 60
        wanted = [f"/data/local-files/?d={folder}/{Path(path).name}" for path in paths]
        while True:
            tasks = self.call("GET", f"/api/tasks?project={project}&page_size=1000")
            tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
            by_url = {t["data"].get("image"): t["id"] for t in tasks}
            if all(url in by_url for url in wanted):
                return [by_url[url] for url in wanted]
            if time.monotonic() > deadline:
                raise TimeoutError(f"local-files sync made {sorted(by_url)}, not {wanted}")
            time.sleep(0.5)

    def register_ml_backend(self, project: int, url: str, basic_auth: tuple[str, str] | None = None,
                            interactive: bool = True, title: str = "g4seg") -> int:
        """Connect a backend; with basic auth, the webhook Label Studio makes for it carries it too."""
        body = {"url": url, "project": project, "is_interactive": interactive, "title": title}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        ml = self.call("POST", "/api/ml", json=body)
        if basic_auth:
            # Label Studio's auto-made ML webhook sends no credentials; give it the backend's.
            header = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            for hook in self.webhooks(project):
                if hook["url"].rstrip("/") == url.rstrip("/") + "/webhook":
                    self.call("PATCH", f"/api/webhooks/{hook['id']}/", json={
                        "url": hook["url"], "headers": {"Authorization": header},
                        "send_payload": True, "send_for_all_actions": True, "is_active": True})
        return ml["id"]

    def webhooks(self, project: int) -> list[dict]:
        return self.call("GET", f"/api/webhooks/?project={project}")

    def delete_webhooks(self, project: int) -> None:
        """Stop the project's webhooks (saved annotations then reach no backend)."""
        for hook in self.webhooks(project):
            self.call("DELETE", f"/api/webhooks/{hook['id']}/", expect=(200, 204))

    def interactive(self, ml_backend: int, task: int, context_result: list[dict]) -> dict:
        """What the labeling screen sends for a smart tool; returns Label Studio's answer ({"data": ...})."""
        return self.call("POST", f"/api/ml/{ml_backend}/interactive-annotating",
                         json={"task": task, "context": {"result": context_result}})

    def create_annotation(self, task: int, result: list[dict]) -> dict:
        return self.call("POST", f"/api/tasks/{task}/annotations/", json={"result": result, "was_cancelled": False})

    def update_annotation(self, annotation: int, result: list[dict]) -> dict:
        return self.call("PATCH", f"/api/annotations/{annotation}/", json={"result": result})

    def create_draft(self, task: int, result: list[dict]) -> dict:
        return self.call("POST", f"/api/tasks/{task}/drafts", json={"result": result, "lead_time": 1.0})

    def predictions(self, task: int) -> list[dict]:
        return self.call("GET", f"/api/predictions?task={task}")

    def retrieve_predictions(self, project: int, tasks: list[int]) -> dict:
        """The Data Manager's "Retrieve predictions" action over the given tasks."""
        return self.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
                         json={"selectedItems": {"all": False, "included": tasks}}, timeout=600)

    def wait_for_predictions(self, task: int, timeout: float, where=lambda p: True) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [p for p in self.predictions(task) if where(p)]
            if found:
                return found
            time.sleep(0.5)
        raise TimeoutError(f"no prediction appeared on task {task} within {timeout:.0f} s")


class BackendProcess:
    """`g4seg serve` as a real server process on a free loopback port."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, auth: tuple[str, str] | None,
                 workdir: Path | None = None, env: dict[str, str] | None = None):
        self.url, self.process, self.log, self.auth = url, process, log, auth
        self.workdir, self.env = workdir, env

    @classmethod
    def start(cls, workdir: Path, env: dict[str, str], auth: tuple[str, str] | None = ("g4seg", "e2e-secret"),
              timeout: float = 180, port: int | None = None) -> "BackendProcess":
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("G4SEG_", "LABEL_STUDIO_", "BASIC_AUTH"))}
        full_env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", G4SEG_THREADS="4", **env)
        if "G4SEG_QUEUE_URL" not in env:  # each server its own job queue, never the user's
            full_env.setdefault("G4SEG_DATA_DIR", str(workdir / f"queue-{port}"))
        if auth:
            full_env.update(BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1])
        log = workdir / f"backend-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "g4seg_core.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=full_env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/health", timeout, process, log)
        except BaseException:
            stop_process(process)
            raise
        return cls(url, process, log, auth, workdir, env)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Signal the whole server (gunicorn's master and its workers) and wait for it to end."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig) if sig == signal.SIGKILL else os.kill(self.process.pid, sig)
        self.process.wait(timeout)
        if sig == signal.SIGKILL:
            return
        with contextlib.suppress(ProcessLookupError):  # a worker that outlived its master
            os.killpg(self.process.pid, signal.SIGKILL)

    def start_again(self, timeout: float = 180) -> "BackendProcess":
        """The same server (port, settings, queue) started anew."""
        again = type(self).start(self.workdir, self.env, self.auth, timeout, port=int(self.url.rsplit(":", 1)[1]))
        self.process = again.process
        return self

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, auth=self.auth, timeout=30)

    def metric(self, name: str, **labels) -> float:
        """One sample of the backend's /metrics (Prometheus' text format); 0 when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def post(self, path: str, body) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.url + path, data=data, auth=self.auth, timeout=300,
                             headers={"Content-Type": "application/json"})

    def stop(self) -> None:
        stop_process(self.process)


def write_test_images(folder: Path, count: int, height: int = 96, width: int = 128, seed: int = 0):
    """Small PNGs of one coloured ellipse on a noisy background: [(path, object mask), ...]."""
    import cv2
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        image = np.clip(rng.normal(90, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        centre = (int(width * rng.uniform(0.4, 0.6)), int(height * rng.uniform(0.4, 0.6)))
        axes = (int(width * rng.uniform(0.18, 0.25)), int(height * rng.uniform(0.2, 0.28)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        colour = np.array([210, 70, 40]) + rng.integers(-15, 15, 3)
        image[mask > 0] = np.clip(colour + rng.normal(0, 8, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        path = folder / f"object-{seed}-{index}.png"
        Image.fromarray(image).save(path)
        out.append((path, mask.astype(bool)))
    return out
