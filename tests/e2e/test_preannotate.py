"""`g4seg preannotate` against a real Label Studio 1.23.2 (tiny random-weight model), and its upload rules.

End to end: a project of five tasks, one with a broken image -> four brush predictions uploaded and
the broken task reported; a second run uploads nothing; two shards together cover every task
exactly once; --overwrite replaces rather than adds. Then, against a stand-in client, what a
flaky connection and an interruption must not do: upload twice, or lose computed predictions.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from backend.ls_format import BrushOutput
from backend.preannotation import (
    MODEL_VERSION_PREFIX,
    Preannotator,
    PredictionUploader,
    Shard,
    preannotate_project,
)
from g4seg_core.cli import main
from g4seg_core.errors import ImageError, SettingError

H, W = 96, 128  # the size of labelstudio.write_test_images' images


@pytest.fixture(scope="module")
def project_with_broken_image(label_studio, label_config_xml, test_images, tmp_path_factory):
    """A project of five tasks: four images and one file that is no image. Returns a factory."""
    broken = tmp_path_factory.mktemp("broken") / "broken.png"
    broken.write_bytes(b"this is not an image")

    def make(title: str):
        images = [path for path, _ in test_images(4, seed=7)]
        project = label_studio.create_project(label_config_xml, title=title)
        tasks = label_studio.import_images(project, [*images[:2], broken, *images[2:]])
        assert len(tasks) == 5
        return project, tasks, tasks[2]

    return make


def run_preannotate(label_studio, tiny_model_dir, project: int, *extra: str) -> int:
    return main(["preannotate", "--url", label_studio.url, "--api-key", label_studio.token, "--project", str(project),
                 "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--quiet",
                 "--batch-size", "3", "--setting", "working_size=64", *extra])


def ours(label_studio, task: int) -> list[dict]:
    return [p for p in label_studio.predictions(task) if str(p["model_version"]).startswith(MODEL_VERSION_PREFIX)]


def summary_counts(out: str) -> dict[str, int]:
    """done / skipped / failed from the summary line ("done 4 (of which ...), skipped 0, failed 1, ...")."""
    line = next(line for line in out.splitlines() if line.startswith("done "))
    return {key: int(re.search(rf"{key} (\d+)", line).group(1)) for key in ("done", "skipped", "failed")}


@pytest.mark.e2e
def test_uploads_four_reports_the_broken_one_and_resumes(label_studio, project_with_broken_image, tiny_model_dir,
                                                         capsys):
    project, tasks, broken = project_with_broken_image("e2e preannotate")
    rc = run_preannotate(label_studio, tiny_model_dir, project)
    out = capsys.readouterr().out
    assert rc == 1  # a task failed: the run says so, after doing all the others
    assert summary_counts(out) == {"done": 4, "skipped": 0, "failed": 1}
    assert re.search(rf"failed: task {broken}: .*cannot decode image", out)

    assert ours(label_studio, broken) == []
    versions = set()
    regions = 0
    for task in tasks:
        if task == broken:
            continue
        predictions = ours(label_studio, task)
        assert len(predictions) == 1
        versions.add(predictions[0]["model_version"])
        covered = np.zeros((H, W), int)
        for item in predictions[0]["result"]:
            assert item["type"] == "brushlabels" and item["from_name"] == "mask" and item["to_name"] == "image"
            assert (item["original_width"], item["original_height"]) == (W, H)
            assert item["value"]["brushlabels"][0] in ("Cat", "Dog")
            mask = decode_rle(item["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
            assert mask.any()
            covered += mask
            regions += 1
        assert covered.max() <= 1  # classes never overlap
    assert regions > 0
    (version,) = versions
    assert "iseg:" in version and "TINY-RANDOM" in version

    # A second run finds everything done but the broken task, which fails again.
    rc = run_preannotate(label_studio, tiny_model_dir, project)
    out = capsys.readouterr().out
    assert rc == 1
    assert summary_counts(out) == {"done": 0, "skipped": 4, "failed": 1}
    assert all(len(ours(label_studio, t)) == (0 if t == broken else 1) for t in tasks)


@pytest.mark.e2e
def test_two_shards_cover_every_task_exactly_once(label_studio, project_with_broken_image, tiny_model_dir, capsys):
    project, tasks, broken = project_with_broken_image("e2e preannotate shards")
    refine = ["--method", "diffsegmenter", "--refine", "--refine-setting", "iterations=1",
              "--refine-setting", "working_size=64"]
    seen = {}
    for index in (0, 1):
        run_preannotate(label_studio, tiny_model_dir, project, "--shard", f"{index}/2", *refine)
        counts = summary_counts(capsys.readouterr().out)
        mine = [t for t in tasks if t % 2 == index]
        assert counts["done"] + counts["failed"] == len(mine)
        seen[index] = {t for t in tasks if ours(label_studio, t)} - set().union(*seen.values())
        assert seen[index] == {t for t in mine if t != broken}  # each shard did its own tasks only
    assert seen[0] | seen[1] == set(tasks) - {broken}
    assert all(len(ours(label_studio, t)) == 1 for t in seen[0] | seen[1])
    version = ours(label_studio, next(iter(seen[0])))[0]["model_version"]
    assert "diffsegmenter:" in version and " refine g4seg:" in version

    # --overwrite redoes a shard's tasks and replaces their predictions instead of adding to them.
    before = {t: ours(label_studio, t)[0]["id"] for t in seen[0]}
    run_preannotate(label_studio, tiny_model_dir, project, "--shard", "0/2", "--overwrite", *refine)
    assert summary_counts(capsys.readouterr().out)["done"] == len(seen[0])
    for task, old_id in before.items():
        predictions = ours(label_studio, task)
        assert len(predictions) == 1 and predictions[0]["id"] != old_id


@pytest.mark.e2e
def test_bad_project_and_key_are_one_line_errors(label_studio, tiny_model_dir, capsys):
    assert run_preannotate(label_studio, tiny_model_dir, 999999) == 2
    assert "project 999999 not found" in capsys.readouterr().err
    rc = main(["preannotate", "--url", label_studio.url, "--api-key", "0" * 40, "--project", "1"])
    assert rc == 2
    assert "refused the API key" in capsys.readouterr().err


# ---------------------------------------------------------------- upload rules, with a stand-in client


class FakeLabelStudio:
    """Holds tasks and predictions like Label Studio; `import_predictions` can fail on purpose."""

    def __init__(self, task_ids, fail_first_import_after_landing=False):
        self.tasks_data = {t: {"image": f"/data/upload/1/{t}.png"} for t in task_ids}
        self.stored: list[SimpleNamespace] = []
        self.imports = 0
        self.fail_after_landing = fail_first_import_after_landing
        self.tasks = SimpleNamespace(list=self._list_tasks)
        self.predictions = SimpleNamespace(list=self._list_predictions, delete=self._delete)
        self.projects = SimpleNamespace(import_predictions=self._import)

    def _list_tasks(self, project, **kwargs):
        return [SimpleNamespace(id=t, data=d, total_predictions=sum(p.task == t for p in self.stored))
                for t, d in self.tasks_data.items()]

    def _list_predictions(self, task):
        return [p for p in self.stored if p.task == task]

    def _delete(self, pid):
        self.stored = [p for p in self.stored if p.id != pid]

    def _import(self, project, request):
        self.imports += 1
        for item in request:
            self.stored.append(SimpleNamespace(id=len(self.stored) + 100 * self.imports, task=item.task,
                                               model_version=item.model_version))
        if self.fail_after_landing:
            self.fail_after_landing = False
            raise httpx.ReadTimeout("the answer was lost")  # but the predictions landed


class FakePreannotator(Preannotator):
    """Answers an empty prediction without a model; can raise KeyboardInterrupt on its n-th image."""

    model_version = f"{MODEL_VERSION_PREFIX} fake"

    def __init__(self, interrupt_at=None):
        self.calls = 0
        self.interrupt_at = interrupt_at

    def predict(self, image, output, labels):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return {"result": [], "score": 0.0, "model_version": self.model_version}


OUTPUT = BrushOutput("mask", "image", ("Cat", "Dog"), "image")


def fetch(url, task_id):
    if task_id == 3:
        raise ImageError("cannot decode image")
    return np.zeros((8, 8, 3), np.uint8)


def test_a_lost_answer_is_not_uploaded_twice():
    client = FakeLabelStudio([1, 2])
    client.fail_after_landing = True
    uploader = PredictionUploader(client, 1, FakePreannotator.model_version, batch_size=5, backoff=0)
    for task in (1, 2):
        uploader.add({"task": task, "result": [], "score": 0.0, "model_version": FakePreannotator.model_version}, [])
    uploader.flush()
    assert client.imports == 1 and len(client.stored) == 2 and uploader.uploaded == 2


def test_an_interrupted_run_keeps_what_it_computed_and_the_next_run_continues():
    client = FakeLabelStudio(range(1, 7))
    summary = preannotate_project(client, 1, FakePreannotator(interrupt_at=4), fetch, OUTPUT, batch_size=100,
                                  progress=False)
    # Interrupted on task 5: tasks 1, 2 and 4 are computed (3 failed) and flushed on the way out.
    assert summary.interrupted and summary.done == 3 and summary.not_uploaded == 0
    assert summary.failed == [(3, "cannot decode image")]
    summary = preannotate_project(client, 1, FakePreannotator(), fetch, OUTPUT, batch_size=2, progress=False)
    assert (summary.done, summary.skipped, len(summary.failed)) == (2, 3, 1)
    assert sorted(p.task for p in client.stored) == [1, 2, 4, 5, 6]


def test_shards_split_by_task_id():
    ids = range(1, 40)
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    owners = [[s for s in shards if s.owns(t)] for t in ids]
    assert all(len(o) == 1 for o in owners)
    for bad in ("3/3", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(SettingError):
            Shard.parse(bad)
