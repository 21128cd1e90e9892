"""Batch predictions for tasks with no rough shape go through the pre-annotation path when enabled."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image
from test_backend_app import H, W, polygon, predict_body, task

from backend.app import create_app
from backend.settings import Settings
from g4seg_core.engines.factory import EngineStatus, create_engine
from g4seg_core.errors import SettingError
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.refiner import G4SegRefiner


@pytest.fixture(scope="module")
def refiner(tiny_model_dir):
    return G4SegRefiner.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32",
                                        config=RefinerConfig(iterations=1))


@pytest.fixture
def files(tmp_path):
    image = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "cat.png")
    return tmp_path


def client_for(files, engine_loader, **settings):
    app = create_app(Settings(local_files_root=files, **settings), engine_loader=engine_loader,
                     load_in_background=False)
    return app.test_client(), app


def test_task_without_shapes_gets_text_only_masks_when_enabled(files, refiner):
    client, app = client_for(files, lambda: EngineStatus("g4seg", refiner), preannotate_method="iseg")
    try:
        answer = client.post("/predict", json=predict_body(tasks=[task()])).get_json()
        (prediction,) = answer["results"]
        assert prediction["model_version"] != refiner.version  # the pre-annotation's own version
        assert "iseg" in prediction["model_version"]
        assert prediction["result"], "the tiny model's text-only masks should cover something"
        labels = set()
        for region in prediction["result"]:
            assert region["type"] == "brushlabels"
            mask = decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3]
            assert mask.shape == (H, W)
            labels.update(region["value"]["brushlabels"])
        assert labels <= {"Cat", "Dog"}
        # A task with a rough shape still gets that shape refined, not text-only masks.
        shaped = task(task_id=2, annotations=[{"id": 7, "result": [polygon()]}])
        (refined,) = client.post("/predict", json=predict_body(tasks=[shaped])).get_json()["results"]
        assert refined["model_version"] == refiner.version
    finally:
        app.extensions["g4seg"].writeback.stop()


def test_off_by_default_a_task_without_shapes_gets_nothing(files, refiner):
    client, app = client_for(files, lambda: EngineStatus("g4seg", refiner))
    try:
        (prediction,) = client.post("/predict", json=predict_body(tasks=[task()])).get_json()["results"]
        assert prediction == []  # no prediction stored
    finally:
        app.extensions["g4seg"].writeback.stop()


def test_classic_engine_cannot_preannotate_and_says_why(files, caplog):
    client, app = client_for(files, lambda: create_engine("identity"), preannotate_method="iseg")
    try:
        with caplog.at_level("WARNING", logger="backend.service"):
            (prediction,) = client.post("/predict", json=predict_body(tasks=[task()])).get_json()["results"]
        assert prediction == []  # nothing stored: Retrieve Predictions may try again once it is fixed
        assert any("G4SEG_PREANNOTATE" in r.getMessage() for r in caplog.records)
    finally:
        app.extensions["g4seg"].writeback.stop()


def test_preannotate_settings_from_the_environment():
    assert Settings.from_env({"G4SEG_PREANNOTATE": "DiffSegmenter"}).preannotate_method == "diffsegmenter"
    assert Settings.from_env({"G4SEG_PREANNOTATE": "off"}).preannotate_method is None
    assert Settings.from_env({"G4SEG_PREANNOTATE_REFINE": "false"}).preannotate_refine is False
    with pytest.raises(SettingError, match="G4SEG_PREANNOTATE"):
        Settings.from_env({"G4SEG_PREANNOTATE": "sam"})


def test_a_worker_whose_model_version_differs_from_the_run_refuses_to_start(tiny_model_dir):
    """On a cluster every actor must make the run's model version, or a re-run would not skip its work."""
    from dataclasses import replace

    from backend.ls_format import BrushOutput
    from backend.preannotation import Plan, PredictStage, load_preannotator
    from g4seg_core.method.textseg import config_for

    plan = Plan(url="http://127.0.0.1:9", api_key="k", project=1, output=BrushOutput("mask", "image", ("Cat",), "image"),
                labels=("Cat",), fetch_settings=Settings(), text_config=config_for("iseg", {"working_size": "64"}),
                model=str(tiny_model_dir), device="cpu", dtype="float32")
    preannotator = load_preannotator(plan)
    assert PredictStage(replace(plan, model_version=preannotator.model_version), preannotator).worker
    with pytest.raises(SettingError, match="give every node the same model, --dtype and settings"):
        PredictStage(replace(plan, model_version=preannotator.model_version.replace("float32", "float16")),
                     preannotator)


def test_a_batch_with_an_image_the_model_cannot_take_fails_that_image_alone(refiner):
    """predict_many runs the batch in one model call; when that call fails, each image goes alone,
    so one bad image costs only its own prediction."""
    from backend.ls_format import BrushOutput
    from backend.preannotation import Preannotator

    preannotator = Preannotator.for_engine(refiner, "iseg", {"working_size": "64"}, refine=False)
    output = BrushOutput("mask", "image", ("Cat", "Dog"), "image")
    good = (np.random.default_rng(1).random((H, W, 3)) * 255).astype(np.uint8)
    bad = np.zeros((4, 4, 3), np.uint8)  # a valid file, but under the 8x8 the segmenter takes
    answers = preannotator.predict_many([good, bad, good], output, keys=[1, 2, 3])
    assert isinstance(answers[1], Exception) and not isinstance(answers[0], Exception)
    assert answers[0]["result"] and answers[2]["result"]
    # Region ids come from the task, the version and the class: the same task gives the same ids.
    again = preannotator.predict_many([good], output, keys=[1])[0]
    assert [r["id"] for r in again["result"]] == [r["id"] for r in answers[0]["result"]]
    assert [r["id"] for r in answers[2]["result"]] != [r["id"] for r in answers[0]["result"]]
