"""`g4seg preannotate` against a real Label Studio 1.23.2 (tiny random-weight model), in-process and on Ray.

A project of twelve tasks, one with a broken image: in-process, and on a local Ray with two CPU
actors one of which is killed mid-run, each run uploads eleven brush predictions, every task's
exactly once, and reports the broken task; a second run uploads nothing (whichever executor made
the first); a whole run killed mid-way loses nothing uploaded and the next one resumes;
--overwrite replaces rather than adds. Then the upload's own rules, on the real Label Studio with faults put into the
connection: a lost answer is not uploaded twice, racing writers leave one prediction, and a Label
Studio that keeps failing stops the run with the reason.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio as Client
from label_studio_sdk.converter.brush import decode_rle

from backend.preannotation import (
    MODEL_VERSION_PREFIX,
    InProcess,
    Plan,
    PredictionUploader,
    UploadError,
    load_preannotator,
    preannotate_project,
)
from g4seg_core.cli import main

H, W = 96, 128  # the size of labelstudio.write_test_images' images
TASKS = 12


@pytest.fixture(scope="module")
def new_project(label_studio, label_config_xml, test_images, tmp_path_factory):
    """A factory: a project of `count` tasks, the third one a file that is no image -> (project, tasks, broken)."""
    broken = tmp_path_factory.mktemp("broken") / "broken.png"
    broken.write_bytes(b"this is not an image")
    made = [0]

    def make(title: str, count: int = TASKS):
        made[0] += 1
        images = [path for path, _ in test_images(count - 1, seed=made[0])]
        project = label_studio.create_project(label_config_xml, title=title)
        tasks = label_studio.import_images(project, [*images[:2], broken, *images[2:]])
        assert len(tasks) == count
        return project, tasks, tasks[2]

    return make


@pytest.fixture
def ray_here(monkeypatch):
    """`--ray auto` starts a private, small Ray: its own temp dir (so no other Ray on the machine
    is joined), an object store of 100 MB; the code itself turns the dashboard and log copying off."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.setenv("RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES", str(100 * 2**20))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


def args(label_studio, tiny_model_dir, project: int, *extra: str) -> list[str]:
    return ["preannotate", "--url", label_studio.url, "--api-key", label_studio.token, "--project", str(project),
            "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--quiet",
            "--batch-size", "2", "--upload-batch", "3", "--setting", "working_size=64", *extra]


def run_preannotate(label_studio, tiny_model_dir, project: int, *extra: str) -> int:
    return main(args(label_studio, tiny_model_dir, project, *extra))


def ours(label_studio, task: int) -> list[dict]:
    return [p for p in label_studio.predictions(task) if str(p["model_version"]).startswith(MODEL_VERSION_PREFIX)]


def summary_counts(out: str) -> dict[str, int]:
    """done / skipped / failed / left from the summary line ("done 4 (of which ...), skipped 0, failed 1, ...")."""
    line = next(line for line in out.splitlines() if line.startswith("done "))
    return {key: int(re.search(rf"{key} (\d+)", line).group(1)) for key in ("done", "skipped", "failed", "left")}


def workers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("worker ")]


def each_task_once(label_studio, tasks, broken) -> str:
    """Every task but the broken one holds exactly one prediction of ours, brush regions that fit the
    image and never overlap; answers the model version."""
    versions = set()
    for task in tasks:
        predictions = ours(label_studio, task)
        if task == broken:
            assert predictions == []
            continue
        assert len(predictions) == 1, f"task {task} holds {len(predictions)} predictions of ours"
        versions.add(predictions[0]["model_version"])
        covered = np.zeros((H, W), int)
        for item in predictions[0]["result"]:
            assert item["type"] == "brushlabels" and item["from_name"] == "mask" and item["to_name"] == "image"
            assert (item["original_width"], item["original_height"]) == (W, H)
            assert item["value"]["brushlabels"][0] in ("Cat", "Dog")
            mask = decode_rle(item["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
            assert mask.any()
            covered += mask
        assert covered.max() <= 1  # classes never overlap
    (version,) = versions
    return version


def assert_a_second_run_uploads_nothing(label_studio, tiny_model_dir, project, tasks, broken, version, capsys):
    """A run over a project already done (in-process, whoever did it): every task skipped but the
    broken one, which fails again, and each task still holds its one prediction."""
    rc = run_preannotate(label_studio, tiny_model_dir, project)
    out = capsys.readouterr().out
    assert rc == 1
    assert summary_counts(out) == {"done": 0, "skipped": 11, "failed": 1, "left": 0}
    assert each_task_once(label_studio, tasks, broken) == version


@pytest.mark.e2e
def test_in_process_uploads_eleven_reports_the_broken_one_and_a_second_run_uploads_nothing(
        label_studio, new_project, tiny_model_dir, capsys):
    project, tasks, broken = new_project("e2e preannotate in-process")
    rc = run_preannotate(label_studio, tiny_model_dir, project)
    out = capsys.readouterr().out
    assert rc == 1  # a task failed: the run says so, after doing all the others
    assert summary_counts(out) == {"done": 11, "skipped": 0, "failed": 1, "left": 0}
    assert re.search(rf"failed: task {broken}: .*cannot decode image", out)
    assert len(workers(out)) == 1 and "in-process" in out
    version = each_task_once(label_studio, tasks, broken)
    assert "iseg:" in version and "TINY-RANDOM" in version
    regions = sum(len(ours(label_studio, t)[0]["result"]) for t in tasks if t != broken)
    assert regions > 0

    # A second run finds everything done but the broken task, which fails again.
    assert_a_second_run_uploads_nothing(label_studio, tiny_model_dir, project, tasks, broken, version, capsys)


@pytest.mark.e2e
def test_on_ray_two_actors_one_killed_mid_run_upload_eleven_once_and_a_second_run_uploads_nothing(
        label_studio, new_project, tiny_model_dir, ray_here, monkeypatch, capsys):
    project, tasks, broken = new_project("e2e preannotate ray")
    marker = os.path.join(ray_here, "killed")
    monkeypatch.setenv("G4SEG_TEST_KILL_WORKER", marker)  # the first actor to start a 2nd batch dies
    rc = run_preannotate(label_studio, tiny_model_dir, project, "--ray", "auto", "--actors", "2")
    out = capsys.readouterr().out
    assert os.path.exists(marker), "no actor was killed: the test proves nothing"
    assert rc == 1
    assert summary_counts(out) == {"done": 11, "skipped": 0, "failed": 1, "left": 0}
    assert re.search(rf"failed: task {broken}: .*cannot decode image", out)
    assert "a local Ray started for this run, 2 actors x (1 CPU)" in out
    assert len(workers(out)) >= 2  # the killed actor's first batch, and its tasks done by another process
    version = each_task_once(label_studio, tasks, broken)

    # Ray's actors and this process make the same model version, so either resumes the other.
    assert_a_second_run_uploads_nothing(label_studio, tiny_model_dir, project, tasks, broken, version, capsys)


@pytest.mark.e2e
def test_on_ray_a_model_the_workers_cannot_find_is_a_one_line_error(label_studio, new_project, tmp_path, ray_here,
                                                                     capsys):
    project, tasks, _ = new_project("e2e preannotate ray no model", count=3)
    rc = main(["preannotate", "--url", label_studio.url, "--api-key", label_studio.token, "--project", str(project),
               "--model", str(tmp_path / "no-such-model"), "--device", "cpu", "--quiet", "--ray", "auto"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [line for line in err.splitlines() if line.startswith("g4seg: error")]
    assert "no-such-model" in line
    assert all(ours(label_studio, t) == [] for t in tasks)


@pytest.mark.e2e
def test_a_run_killed_mid_way_loses_nothing_uploaded_and_the_next_run_resumes(
        label_studio, new_project, tiny_model_dir, tmp_path, capsys):
    project, tasks, broken = new_project("e2e preannotate killed run")
    marker = tmp_path / "killed"
    # In-process, the hook kills the command itself at its second model batch (a lost machine):
    # the first batch's two predictions were uploaded by then (--upload-batch 2).
    env = dict(os.environ, G4SEG_TEST_KILL_WORKER=str(marker))
    killed = subprocess.run([sys.executable, "-m", "g4seg_core.cli",
                             *args(label_studio, tiny_model_dir, project, "--upload-batch", "2")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and marker.exists(), killed.stderr[-2000:]
    first = [t for t in tasks if ours(label_studio, t)]
    assert first == tasks[:2]

    rc = run_preannotate(label_studio, tiny_model_dir, project)
    assert rc == 1
    assert summary_counts(capsys.readouterr().out) == {"done": 9, "skipped": 2, "failed": 1, "left": 0}
    each_task_once(label_studio, tasks, broken)


@pytest.mark.e2e
def test_overwrite_replaces_rather_than_adds(label_studio, new_project, tiny_model_dir, capsys):
    project, tasks, broken = new_project("e2e preannotate overwrite", count=4)
    refine = ["--method", "diffsegmenter", "--refine", "--refine-setting", "iterations=1",
              "--refine-setting", "working_size=64"]
    run_preannotate(label_studio, tiny_model_dir, project, *refine)
    assert summary_counts(capsys.readouterr().out)["done"] == 3
    version = each_task_once(label_studio, tasks, broken)
    assert "diffsegmenter:" in version and " refine g4seg:" in version
    before = {t: ours(label_studio, t)[0]["id"] for t in tasks if t != broken}

    run_preannotate(label_studio, tiny_model_dir, project, "--overwrite", *refine)
    assert summary_counts(capsys.readouterr().out)["done"] == 3
    assert each_task_once(label_studio, tasks, broken) == version
    for task, old_id in before.items():
        assert ours(label_studio, task)[0]["id"] != old_id


@pytest.mark.e2e
def test_an_interrupted_run_uploads_what_it_computed_before_stopping(
        label_studio, new_project, tiny_model_dir, capsys):
    """Ctrl-C: the predictions computed but not yet a full upload batch are uploaded on the way out."""
    project, tasks, broken = new_project("e2e preannotate ctrl-c", count=8)
    plan = _plan(label_studio, tiny_model_dir, project, upload_batch=100)
    preannotator = load_preannotator(plan)
    plan = replace(plan, model_version=preannotator.model_version)
    calls = [0]
    predict_many = preannotator.predict_many

    def interrupted_on_the_third_batch(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return predict_many(*a, **k)

    preannotator.predict_many = interrupted_on_the_third_batch
    summary = preannotate_project(_client(label_studio), plan, InProcess(preannotator), progress=False)
    # Batches of 2: tasks 1-2, then 3 (broken) and 4, then Ctrl-C: three predictions uploaded, none lost.
    assert summary.interrupted and (summary.done, len(summary.failed), summary.left) == (3, 1, 4)
    assert [t for t in tasks if ours(label_studio, t)] == [tasks[0], tasks[1], tasks[3]]


@pytest.mark.e2e
def test_bad_arguments_project_and_key_are_one_line_errors(label_studio, tiny_model_dir, capsys):
    assert run_preannotate(label_studio, tiny_model_dir, 999999) == 2
    assert "project 999999 not found" in capsys.readouterr().err
    rc = main(["preannotate", "--url", label_studio.url, "--api-key", "0" * 40, "--project", "1"])
    assert rc == 2
    assert "refused the API key" in capsys.readouterr().err
    assert run_preannotate(label_studio, tiny_model_dir, 1, "--actors", "2") == 2
    assert "--actors need --ray" in capsys.readouterr().err
    assert run_preannotate(label_studio, tiny_model_dir, 1, "--ray", "auto", "--device", "cuda:1") == 2
    assert "--device auto or cuda" in capsys.readouterr().err


# ---------------------------------------------------------------- the upload's rules, faults in the connection


def _plan(label_studio, tiny_model_dir, project: int, **extra) -> Plan:
    from backend.ls_format import BrushOutput
    from backend.settings import Settings
    from g4seg_core.method.textseg import config_for

    return Plan(url=label_studio.url, api_key=label_studio.token, project=project,
                output=BrushOutput("mask", "image", ("Cat", "Dog"), "image"), labels=("Cat", "Dog"),
                fetch_settings=Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token),
                text_config=config_for("iseg", {"working_size": "64"}), model=str(tiny_model_dir), device="cpu",
                dtype="float32", batch_size=2, **extra)


class Faults(httpx.HTTPTransport):
    """Label Studio's real answers, except where `before_import` / `after_import` step in."""

    def __init__(self, before_import=None, after_import=None):
        super().__init__()
        self.before_import, self.after_import = before_import, after_import
        self.imports = 0

    def handle_request(self, request):
        is_import = request.method == "POST" and request.url.path.endswith("/import/predictions")
        if is_import:
            self.imports += 1
            if self.before_import:
                self.before_import(self.imports)
        response = super().handle_request(request)
        if is_import and self.after_import:
            response.read()
            self.after_import(self.imports)
        return response


def _client(label_studio, transport=None) -> Client:
    http = httpx.Client(transport=transport, timeout=60) if transport else None
    return Client(base_url=label_studio.url, api_key=label_studio.token, timeout=60, max_retries=0,
                  **({"httpx_client": http} if http else {}))


def _prediction(version: str) -> dict:
    return {"result": [], "score": 0.0, "model_version": version}


@pytest.mark.e2e
def test_an_upload_whose_answer_was_lost_is_not_made_twice(label_studio, new_project):
    project, tasks, _ = new_project("e2e upload lost answer", count=3)
    version = f"{MODEL_VERSION_PREFIX} lost-answer"

    def lose_the_first_answer(n):
        if n == 1:
            raise httpx.ReadTimeout("the answer was lost")  # after Label Studio stored the predictions

    transport = Faults(after_import=lose_the_first_answer)
    uploader = PredictionUploader(_client(label_studio, transport), project, version, backoff=0)
    status = uploader.upload([(t, _prediction(version), []) for t in tasks[:2]])
    assert status == {tasks[0]: "uploaded", tasks[1]: "uploaded"}
    assert transport.imports == 1  # the retry found them landed and sent nothing
    assert [len(ours(label_studio, t)) for t in tasks] == [1, 1, 0]
    # Delivered again (a retried batch): checked before writing, not written.
    assert uploader.upload([(tasks[0], _prediction(version), [])]) == {tasks[0]: "present"}
    assert len(ours(label_studio, tasks[0])) == 1


@pytest.mark.e2e
def test_two_writers_racing_on_a_task_leave_one_prediction(label_studio, new_project):
    project, tasks, _ = new_project("e2e upload race", count=3)
    version = f"{MODEL_VERSION_PREFIX} race"
    other = _client(label_studio)
    theirs = []

    def the_other_writer_lands_first(n):
        # Between our check and our write, another worker (a retried batch) writes the same task.
        if n == 1:
            from label_studio_sdk import PredictionRequest

            other.projects.import_predictions(project, request=[PredictionRequest(task=tasks[0], **_prediction(version))])
            theirs.extend(p["id"] for p in ours(label_studio, tasks[0]))

    uploader = PredictionUploader(_client(label_studio, Faults(before_import=the_other_writer_lands_first)),
                                  project, version)
    uploader.upload([(tasks[0], _prediction(version), [])])
    assert len(theirs) == 1
    survivors = ours(label_studio, tasks[0])
    assert [p["id"] for p in survivors] == theirs  # ours went: the lowest id (the other writer's) stays


@pytest.mark.e2e
def test_a_label_studio_that_keeps_failing_stops_the_run_with_the_reason(label_studio, new_project):
    project, tasks, _ = new_project("e2e upload refused", count=3)

    def refuse(n):
        raise httpx.ConnectError("connection refused")

    uploader = PredictionUploader(_client(label_studio, Faults(before_import=refuse)), project,
                                  f"{MODEL_VERSION_PREFIX} refused", retries=2, backoff=0)
    with pytest.raises(UploadError, match="did not take 2 predictions: ConnectError: connection refused"):
        uploader.upload([(t, _prediction(uploader.model_version), []) for t in tasks[:2]])
    assert all(ours(label_studio, t) == [] for t in tasks)


def test_the_summary_names_each_worker_and_every_failure():
    from backend.preannotation import Summary, WorkerStats

    summary = Summary(executor="in-process", total=12, pending=12, done=10, skipped=0, left=1, seconds=36.0,
                      failed=[(7, "cannot decode image")], workers={"host:1 (cpu)": WorkerStats(11, 33.0)})
    lines = summary.lines()
    assert lines[0].startswith("done 10 (of which 0 with no class found), skipped 0, failed 1, left 1, of 12 tasks")
    assert "1000 images/hour" in lines[0]
    assert "worker host:1 (cpu): 11 images, 33.0 s computing, 1200 images/hour" in lines
    assert "failed: task 7: cannot decode image" in lines
    assert any(line.startswith("left: 1") for line in lines)
    assert json.dumps(lines)  # plain text, one line each
