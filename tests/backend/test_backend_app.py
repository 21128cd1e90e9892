"""The Label Studio backend's Flask app: every route, every way a rough shape arrives, every bad input.

The engine is the real `identity` peer (the prior, thresholded) unless a test needs another, so the
expected masks are known exactly; images come from a local-files root, as with a Label Studio
that shares its files folder with the backend.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image
from prometheus_sample import metric

from backend.app import create_app
from backend.settings import Settings
from g4seg_core.engines.base import Engine
from g4seg_core.engines.factory import EngineStatus, create_engine

H, W = 96, 128
CONFIG = """<View>
  <Image name="photo" value="$picture"/>
  <BrushLabels name="refined" toName="photo"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <PolygonLabels name="rough" toName="photo"><Label value="Cat"/><Label value="Dog"/></PolygonLabels>
  <RectangleLabels name="box" toName="photo" smart="true"><Label value="Cat"/><Label value="Dog"/></RectangleLabels>
  <KeyPointLabels name="click" toName="photo" smart="true"><Label value="Cat"/><Label value="Dog"/></KeyPointLabels>
</View>"""
SQUARE = [[25, 25], [50, 25], [50, 50], [25, 50]]  # percent: pixels x 32..64, y 24..48


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    image = np.zeros((H, W, 3), np.uint8)
    image[24:48, 32:64] = 220
    Image.fromarray(image).save(root / "cat.png")
    (root / "notes.png").write_bytes(b"this is text, not an image")
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(root / "large.png")
    (tmp_path / "secret.png").write_bytes((root / "cat.png").read_bytes())
    return root


def make_client(files, engine_loader=None, **settings):
    settings = Settings(local_files_root=files, **{"data_dir": files.parent / "queue", **settings})
    app = create_app(settings, engine_loader=engine_loader or (lambda: create_engine("identity")),
                     load_in_background=False)
    return app.test_client(), app


@pytest.fixture
def client(files):
    test_client, app = make_client(files)
    yield test_client
    app.extensions["g4seg"].writeback.stop()


def task(image="cat.png", task_id=1, annotations=(), drafts=()):
    return {"id": task_id, "data": {"picture": f"/data/local-files/?d={image}"},
            "annotations": list(annotations), "drafts": list(drafts)}


def predict_body(context_result=None, tasks=None, config=CONFIG):
    context = None if context_result is None else {"result": context_result}
    return {"tasks": tasks or [task()], "project": "1.1700000000", "label_config": config,
            "params": {"login": None, "password": None, "context": context}}


def polygon(points=SQUARE, label="Cat"):
    return {"type": "polygonlabels", "from_name": "rough", "to_name": "photo", "original_width": W,
            "original_height": H, "value": {"points": points, "closed": True, "polygonlabels": [label]}}


def brush(mask, label="Cat"):
    return {"type": "brushlabels", "from_name": "refined", "to_name": "photo", "original_width": W,
            "original_height": H, "origin": "manual",
            "value": {"format": "rle", "rle": mask2rle(np.where(mask, 255, 0).astype(np.uint8)), "brushlabels": [label]}}


def rectangle(x, y, w, h, label="Cat"):
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "photo", "original_width": W,
            "original_height": H, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                            "rectanglelabels": [label]}}


def keypoint(x, y, label="Cat", positive=True):
    return {"type": "keypointlabels", "from_name": "click", "to_name": "photo", "is_positive": positive,
            "original_width": W, "original_height": H,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def decoded(result_item):
    h, w = result_item["original_height"], result_item["original_width"]
    return decode_rle(result_item["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def square_mask():
    mask = np.zeros((H, W), bool)
    mask[24:48, 32:64] = True
    return mask


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def only_result(response):
    assert response.status_code == 200, response.get_json()
    (prediction,) = response.get_json()["results"]
    return prediction


# ---------------------------------------------------------------- protocol routes


def test_health_names_the_engine_and_setup_answers_its_version(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.get_json()
    assert body["status"] == "UP" and body["engine"] == "identity" and body["model_version"] == "identity"
    setup = client.post("/setup", json={"project": "1.1", "schema": CONFIG, "hostname": "http://x",
                                        "access_token": "t", "extra_params": None})
    assert setup.status_code == 200 and setup.get_json() == {"model_version": "identity"}
    assert client.get("/versions").get_json() == {"versions": ["identity"]}


def test_setup_refuses_a_project_without_a_brush_or_polygon_tag(client):
    schema = "<View><Image name='i' value='$i'/><RectangleLabels name='p' toName='i'><Label value='A'/></RectangleLabels></View>"
    answer = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert answer.status_code == 400 and "BrushLabels" in answer.get_json()["error"]


def test_metrics_count_requests_and_refinements(client):
    client.post("/predict", json=predict_body([polygon()]))
    assert metric(client, "g4seg_refine_seconds_count") == 1
    assert metric(client, "g4seg_requests_total", route="/predict", status="200") == 1
    assert metric(client, "g4seg_engine_ready") == 1 and metric(client, "g4seg_refinement_slots") == 4
    assert metric(client, "process_resident_memory_bytes") > 0  # the default registry's process metrics
    assert client.get("/metrics").content_type.startswith("text/plain")


def test_basic_auth_guards_everything_but_health(files):
    client, app = make_client(files, basic_auth_user="ls", basic_auth_pass="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:guess").decode()}
    assert client.get("/health").status_code == 200
    for headers in ({}, bad):
        answer = client.post("/predict", json=predict_body([polygon()]), headers=headers)
        assert answer.status_code == 401 and "authentication" in answer.get_json()["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.post("/predict", json=predict_body([polygon()]), headers=good).status_code == 200
    app.extensions["g4seg"].writeback.stop()


# ---------------------------------------------------------------- every way a rough shape arrives


def test_interactive_polygon_is_refined_into_a_brush_at_the_image_size(client):
    prediction = only_result(client.post("/predict", json=predict_body([polygon()])))
    (item,) = prediction["result"]
    assert item["type"] == "brushlabels" and item["from_name"] == "refined" and item["to_name"] == "photo"
    assert item["value"]["brushlabels"] == ["Cat"] and 0 <= item["score"] <= 1
    assert (item["original_width"], item["original_height"]) == (W, H)
    assert iou(decoded(item), square_mask()) > 0.9
    assert prediction["model_version"] == "identity" and prediction["score"] == item["score"]


def test_interactive_brush_stroke_is_refined(client):
    stroke = np.zeros((H, W), bool)
    stroke[30:40, 40:60] = True
    (item,) = only_result(client.post("/predict", json=predict_body([brush(stroke)])))["result"]
    assert np.array_equal(decoded(item), stroke)


def test_smart_rectangle_uses_the_box_as_the_prior(client):
    (item,) = only_result(client.post("/predict", json=predict_body([rectangle(25, 25, 25, 25)])))["result"]
    mask = decoded(item)
    assert mask.shape == (H, W) and mask.any()
    assert not mask[:, :31].any() and not mask[:, 65:].any() and not mask[:23].any() and not mask[49:].any()


@pytest.mark.parametrize("saved_in", ["annotations", "drafts"])
def test_smart_keypoint_inside_a_saved_shape_refines_that_shape(client, saved_in):
    saved = {"id": 7, "result": [polygon()], "updated_at": "2026-01-01T00:00:00Z"}
    body = predict_body([keypoint(37.5, 37.5)], tasks=[task(**{saved_in: [saved]})])
    (item,) = only_result(client.post("/predict", json=body))["result"]
    assert iou(decoded(item), square_mask()) > 0.9  # the whole polygon, not a disc around the click


def test_smart_keypoint_outside_any_shape_uses_the_point(client):
    saved = {"id": 7, "result": [polygon()]}
    body = predict_body([keypoint(80, 80)], tasks=[task(annotations=[saved])])
    (item,) = only_result(client.post("/predict", json=body))["result"]
    mask = decoded(item)
    assert mask[int(0.8 * H), int(0.8 * W)] and not (mask & square_mask()).any()


def test_keypoint_with_a_label_the_brush_lacks_takes_the_shape_label(files):
    config = CONFIG.replace('<KeyPointLabels name="click" toName="photo" smart="true"><Label value="Cat"/>',
                            '<KeyPointLabels name="click" toName="photo" smart="true"><Label value="Here"/>')
    client, app = make_client(files)
    body = predict_body([keypoint(37.5, 37.5, label="Here")], tasks=[task(annotations=[{"result": [polygon()]}])],
                        config=config)
    (item,) = only_result(client.post("/predict", json=body))["result"]
    assert item["value"]["brushlabels"] == ["Cat"]
    app.extensions["g4seg"].writeback.stop()


def test_two_labels_come_back_as_two_non_overlapping_brushes(client):
    left = polygon([[5, 5], [40, 5], [40, 60], [5, 60]], "Cat")
    right = polygon([[30, 5], [90, 5], [90, 60], [30, 60]], "Dog")
    result = only_result(client.post("/predict", json=predict_body([left, right])))["result"]
    masks = {item["value"]["brushlabels"][0]: decoded(item) for item in result}
    assert set(masks) == {"Cat", "Dog"} and not (masks["Cat"] & masks["Dog"]).any()


def test_a_second_click_on_a_task_reuses_the_engines_work_on_its_image(files, tiny_model):
    # G4Seg (the tiny model): the backend names the image by task and URL, so the second shape
    # on a task pays only its mask-conditioned passes: no VAE encoding, no reference pass. The
    # image is fetched and decoded again for each request here (no image cache): the name, not
    # the array, is what the engine's cache trusts.
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.model import counting
    from g4seg_core.method.refiner import G4SegRefiner

    engine = G4SegRefiner(tiny_model, RefinerConfig(roi=False, iterations=1, early_stop=False))
    test_client, app = make_client(files, engine_loader=lambda: EngineStatus("g4seg", engine), image_cache_size=0)
    try:
        with counting(tiny_model) as first:
            only_result(test_client.post("/predict", json=predict_body([polygon()])))
        moved = [[x + 5, y] for x, y in SQUARE]
        with counting(tiny_model) as second:
            only_result(test_client.post("/predict", json=predict_body([polygon(moved)])))
        with counting(tiny_model) as other_task:
            only_result(test_client.post("/predict", json=predict_body([polygon(moved)], tasks=[task(task_id=2)])))
    finally:
        app.extensions["g4seg"].writeback.stop()
    assert first["vae_encode"] == 1 and first["unet"] == 2
    assert second["vae_encode"] == 0 and second["unet"] == 1
    assert other_task["vae_encode"] == 1 and other_task["unet"] == 2  # another task: its own name


def test_opening_a_task_with_nothing_to_refine_answers_at_once_with_nothing(client):
    # An empty list for the task, not an empty prediction: Label Studio 1.23 stores no prediction
    # then, so the task is not marked as predicted and "Retrieve Predictions" asks again later.
    answer = client.post("/predict", json=predict_body())
    assert answer.status_code == 200 and answer.get_json()["results"] == [[]]
    assert metric(client, "g4seg_refine_seconds_count") == 0


def test_opening_a_task_after_an_interactive_refinement_stores_nothing(client):
    # A suggestion the annotator accepted is in the annotation already; as a prediction it would show twice.
    assert only_result(client.post("/predict", json=predict_body([polygon()])))["result"]
    answer = client.post("/predict", json=predict_body())
    assert answer.get_json()["results"] == [[]]
    assert metric(client, "g4seg_refine_seconds_count") == 1


def test_retrieve_predictions_refines_each_tasks_latest_annotation(client):
    older = {"id": 1, "result": [polygon([[0, 0], [10, 0], [10, 10], [0, 10]])], "updated_at": "2026-01-01T00:00:00Z"}
    latest = {"id": 2, "result": [polygon()], "updated_at": "2026-02-01T00:00:00Z"}
    tasks = [task(task_id=1, annotations=[older, latest]), task(task_id=2), task(task_id=3, annotations=[latest])]
    answer = client.post("/predict", json=predict_body(tasks=tasks))
    assert answer.status_code == 200
    first, second, third = answer.get_json()["results"]
    assert iou(decoded(first["result"][0]), square_mask()) > 0.9
    assert second == []  # nothing to refine: no prediction stored for it
    assert iou(decoded(third["result"][0]), square_mask()) > 0.9
    # The same shapes again come from the cache.
    client.post("/predict", json=predict_body(tasks=tasks))
    assert metric(client, "g4seg_refine_seconds_count") == 2


def test_one_bad_task_in_a_batch_does_not_sink_the_others(client):
    good = {"id": 1, "result": [polygon()]}
    tasks = [task(task_id=1, annotations=[good]), task(image="notes.png", task_id=2, annotations=[good])]
    first, second = client.post("/predict", json=predict_body(tasks=tasks)).get_json()["results"]
    assert first["result"] and second == []  # nothing stored for it, so a later retrieval tries again
    assert metric(client, "g4seg_task_errors_total") == 1


# ---------------------------------------------------------------- bad input: a JSON reason, and the worker keeps serving


NOTE = "note"  # answered 200 with a note region (see test_bad_input_gets_a_json_reason_and_the_worker_keeps_serving)


def bad_requests():
    degenerate = polygon([[10, 10], [20, 20], [30, 30]])
    two_points = polygon([[10, 10], [20, 20]])
    wrong_size = brush(np.ones((H, W), bool))
    wrong_size["original_width"] = W // 2
    corrupt = brush(square_mask())
    corrupt["value"]["rle"] = corrupt["value"]["rle"][:12]
    no_brush = "<View><Image name='photo' value='$picture'/></View>"
    return [
        ("malformed JSON", b'{"tasks": [', 400, "not valid JSON"),
        ("empty body", b"", 400, "empty"),
        ("not an object", [1, 2], 400, "JSON object"),
        ("no tasks", {"label_config": CONFIG, "tasks": []}, 400, "no tasks"),
        ("task without id", {"label_config": CONFIG, "tasks": [{"data": {}}]}, 400, "integer id"),
        ("no label config", predict_body([polygon()]) | {"label_config": None}, 400, "label config"),
        ("config without brush", predict_body([polygon()], config=no_brush), 400, "BrushLabels"),
        ("unknown label", predict_body([polygon(label="Horse")]), NOTE, "'Horse' is not a label"),
        ("context not a list", predict_body() | {"params": {"context": {"result": "x"}}}, 400, "must be a list"),
        ("context without shapes", predict_body([{"type": "choices", "value": {}}]), 400, "no brush, polygon"),
        ("two-point polygon", predict_body([two_points]), NOTE, "at least 3 points"),
        ("degenerate polygon", predict_body([degenerate]), NOTE, "degenerate"),
        ("empty rectangle", predict_body([rectangle(10, 10, 0, 10)]), NOTE, "empty"),
        ("empty brush", predict_body([brush(np.zeros((H, W), bool))]), NOTE, "empty"),
        ("brush of the wrong size", predict_body([wrong_size]), NOTE, "pixels"),
        ("corrupt brush", predict_body([corrupt]), NOTE, "rle"),
        ("keypoint outside the image", predict_body([keypoint(150, 50)]), NOTE, "outside"),
        ("negative click alone", predict_body([keypoint(50, 50, positive=False)]), NOTE, "nothing to refine"),
        ("undecodable image", predict_body([polygon()], tasks=[task("notes.png")]), NOTE, "cannot decode"),
        ("missing image file", predict_body([polygon()], tasks=[task("absent.png")]), NOTE, "not found"),
        ("task without the image key", predict_body([polygon()], tasks=[{"id": 1, "data": {"image": "x"}}]), NOTE,
         "no data.picture"),
        ("path outside the root", predict_body([polygon()], tasks=[task("../secret.png")]), 403, "outside"),
        ("another host", predict_body([polygon()], tasks=[{"id": 1, "data": {"picture": "http://evil.test/a.png"}}]),
         403, "refusing"),
        ("a file path", predict_body([polygon()], tasks=[{"id": 1, "data": {"picture": "/etc/passwd"}}]), 403,
         "refusing"),
    ]


@pytest.mark.parametrize("name, body, status, reason", bad_requests(), ids=[b[0] for b in bad_requests()])
def test_bad_input_gets_a_json_reason_and_the_worker_keeps_serving(client, name, body, status, reason):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post("/predict", data=data, content_type="application/json")
    if status == NOTE:
        # The annotator's gesture in the screen: a 200 whose one region is the drawn shape again,
        # with the reason as its meta text (Label Studio's screen shows nothing for an error status).
        prediction = only_result(answer)
        (note,) = prediction["result"]
        assert note["id"].startswith("g4seg-n") and reason in note["meta"]["text"][0]
        assert reason in prediction["error"] and prediction["score"] == 0.0
    else:
        assert answer.status_code == status, answer.get_json()
        assert reason in answer.get_json()["error"]
        assert "\n" not in answer.get_json()["error"]
    assert only_result(client.post("/predict", json=predict_body([polygon()])))["result"]


def test_an_image_over_the_pixel_limit_is_refused(files):
    client, app = make_client(files, max_image_pixels=200 * 200)
    answer = client.post("/predict", json=predict_body([polygon()], tasks=[task("large.png")]))
    assert answer.status_code == 413 and "over the limit" in answer.get_json()["error"]
    assert only_result(client.post("/predict", json=predict_body([polygon()])))["result"]
    app.extensions["g4seg"].writeback.stop()


def test_a_request_over_the_body_limit_is_refused(files):
    client, app = make_client(files, max_request_bytes=2048)
    answer = client.post("/predict", json=predict_body([polygon()]) | {"padding": "x" * 4096})
    assert answer.status_code == 413 and answer.get_json()["error"]
    app.extensions["g4seg"].writeback.stop()


def test_images_need_a_configured_label_studio_when_not_on_local_disk(files):
    client, app = make_client(files)
    upload = {"id": 1, "data": {"picture": "/data/upload/1/cat.png"}}
    answer = client.post("/predict", json=predict_body([polygon()], tasks=[upload]))
    # 502 behind the scenes; the screen gets it as a note (see the bad-input test).
    assert answer.status_code == 200 and "LABEL_STUDIO_URL is not set" in answer.get_json()["results"][0]["error"]
    app.extensions["g4seg"].writeback.stop()


def test_an_image_label_studio_cannot_hand_over_is_said_in_a_note(files):
    # Nothing listens on port 9: Label Studio is down.
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    upload = {"id": 1, "data": {"picture": "/data/upload/1/cat.png"}}
    answer = client.post("/predict", json=predict_body([polygon()], tasks=[upload]))
    assert answer.status_code == 200 and "cannot download" in answer.get_json()["results"][0]["error"]
    assert only_result(client.post("/predict", json=predict_body([polygon()])))["result"]
    app.extensions["g4seg"].writeback.stop()


def test_the_model_loads_once_per_process_and_never_in_setup(files):
    loads = []

    def loader():
        loads.append(1)
        return create_engine("identity")

    settings = Settings(local_files_root=files)
    app = create_app(settings, engine_loader=loader, load_in_background=True)
    client = app.test_client()
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(3):
        assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).status_code == 200
        assert client.post("/predict", json=predict_body([polygon()])).status_code == 200
    assert loads == [1]
    app.extensions["g4seg"].writeback.stop()


def test_requests_while_the_model_loads_get_503_and_health_says_loading(files):
    gate = threading.Event()

    def slow_loader():
        assert gate.wait(10)
        return create_engine("identity")

    app = create_app(Settings(local_files_root=files), engine_loader=slow_loader, load_in_background=True)
    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "LOADING"
    for answer in (client.post("/setup", json={"project": "1.1", "schema": CONFIG}),
                   client.post("/predict", json=predict_body([polygon()]))):
        assert answer.status_code == 503 and "loading" in answer.get_json()["error"]
    gate.set()
    app.extensions["g4seg"].holder.wait(10)
    assert client.get("/health").status_code == 200
    app.extensions["g4seg"].writeback.stop()


class GatedEngine(Engine):
    """The identity refiner that waits for a go-ahead: holds the engine busy on demand."""

    name = "gated-identity"

    def __init__(self):
        self.started = threading.Event()
        self.go = threading.Event()

    def refine_probability(self, image, prior, label):
        self.started.set()
        assert self.go.wait(30)
        return prior


def test_requests_past_the_bounded_queue_get_503(files):
    engine = GatedEngine()
    client, app = make_client(files, engine_loader=lambda: EngineStatus("gated", engine), queue_size=1,
                              slot_wait=0.3)
    answers = []
    first = threading.Thread(target=lambda: answers.append(client.post("/predict", json=predict_body([polygon()]))))
    first.start()
    assert engine.started.wait(10)
    busy = client.post("/predict", json=predict_body([polygon()]))
    assert busy.status_code == 503 and "busy" in busy.get_json()["error"]
    # Opening a task with nothing to refine still answers at once.
    assert client.post("/predict", json=predict_body()).status_code == 200
    engine.go.set()
    first.join(10)
    assert answers[0].status_code == 200
    assert client.post("/predict", json=predict_body([polygon()])).status_code == 200
    app.extensions["g4seg"].writeback.stop()


def test_an_engine_that_fails_to_load_is_reported_not_hidden(files):
    from g4seg_core.method.loading import WeightsNotFoundError

    def fail():
        raise WeightsNotFoundError("no weights in /models/sd21")

    client, app = make_client(files, engine_loader=fail)
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "FAILED"
    assert "no weights" in health.get_json()["error"]
    answer = client.post("/predict", json=predict_body([polygon()]))
    assert answer.status_code == 503 and "failed to load" in answer.get_json()["error"]
    app.extensions["g4seg"].writeback.stop()


def test_auto_falls_back_to_the_classic_engine_loudly(files, tmp_path, caplog):
    settings = Settings(local_files_root=files, engine="auto", model=str(tmp_path / "no-such-model"))
    with caplog.at_level(logging.WARNING):
        app = create_app(settings, load_in_background=False)
    health = app.test_client().get("/health").get_json()
    from g4seg_core.engines.classic import CLASSIC_ENGINE

    assert health["status"] == "UP" and health["engine"] == CLASSIC_ENGINE and health["requested_engine"] == "auto"
    assert "classic engine" in health["warning"]
    assert any("classic engine" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    app.extensions["g4seg"].writeback.stop()


# ---------------------------------------------------------------- webhook


def webhook_body(annotation_id=5, result=None, action="ANNOTATION_CREATED"):
    return {"action": action, "project": {"id": 1, "label_config": CONFIG},
            "task": task(task_id=3), "annotation": {"id": annotation_id, "task": 3, "result": result or [polygon()],
                                                    "was_cancelled": False}}


def test_webhook_answers_at_once_and_dead_letters_after_the_age_limit_when_label_studio_is_down(files, caplog):
    # Nothing listens on port 9: every try fails to connect, until the job is older than the age limit.
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40,
                              writeback_backoff=0.01, writeback_max_age=2.5)
    with caplog.at_level(logging.INFO, logger="backend"):
        started = time.perf_counter()
        answer = client.post("/webhook", json=webhook_body())
        assert answer.status_code == 200 and answer.get_json()["status"] == "queued"
        assert answer.get_json()["job"].startswith("t3-a5-")
        assert time.perf_counter() - started < 2
        deadline = time.monotonic() + 30
        while client.get("/health").get_json()["queue"]["dead_letters"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "UP"
    queue = health.get_json()["queue"]
    assert queue["queued"] == 0 and [(d["task"], d["annotation"]) for d in queue["dead"]] == [(3, 5)]
    assert metric(client, "g4seg_queue_dead_letters") == 1
    assert metric(client, "g4seg_queue_dead_letter_failed_at_seconds", task="3", annotation="5") > 0
    assert metric(client, "g4seg_writebacks_total", outcome="retry") >= 2 and metric(client, "g4seg_writebacks_total", outcome="dead_letter") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("try 1 failed" in m for m in messages) and any("moved to the dead letters" in m for m in messages)
    app.extensions["g4seg"].writeback.stop()


def test_the_same_annotation_twice_is_queued_once(files):
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    assert client.post("/webhook", json=webhook_body()).get_json()["status"] == "queued"
    assert client.post("/webhook", json=webhook_body(action="ANNOTATION_UPDATED")).get_json()["status"] == "duplicate"
    moved = webhook_body(result=[polygon([[10, 10], [60, 10], [60, 60], [10, 60]])], action="ANNOTATION_UPDATED")
    assert client.post("/webhook", json=moved).get_json()["status"] == "queued"
    assert client.get("/health").get_json()["queue"]["queued"] == 2
    app.extensions["g4seg"].writeback.stop()


def test_a_queued_job_keeps_ids_and_shapes_not_the_request(files):
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    body = webhook_body()
    body["task"]["data"]["notes"] = "x" * 100_000  # task data the refinement does not need
    body["task"]["predictions"] = [{"result": [brush(np.ones((H, W), bool))]}]
    body["annotation"]["result"].append({"type": "choices", "value": {"choices": ["x" * 10_000]}})
    assert client.post("/webhook", json=body).get_json()["status"] == "queued"
    queue = app.extensions["g4seg"].writeback.queue
    (job,) = queue.jobs()
    assert set(job) == {"id", "kind", "project", "task", "annotation", "digest", "items", "config", "data",
                        "queued_at", "attempts", "last_error"}
    assert job["data"] == {"picture": "/data/local-files/?d=cat.png"} and job["items"] == [polygon()]
    assert queue.label_config(job["config"]) == CONFIG  # stored once, by digest, for every job of the project
    assert len(json.dumps(job)) < 2000
    app.extensions["g4seg"].writeback.stop()


@pytest.mark.parametrize("body, status, reason", [
    (webhook_body(action="PROJECT_UPDATED"), 200, "not one the backend acts on"),
    (webhook_body(result=[{"type": "choices", "value": {"choices": ["x"]}}]), 200, "no rough shape"),
    (webhook_body() | {"annotation": None}, 400, "no annotation"),
    (webhook_body() | {"task": {"id": "x"}}, 400, "no task"),
    (webhook_body() | {"project": {"id": 1, "label_config": "<View/>"}}, 400, "BrushLabels"),
])
def test_webhooks_the_backend_cannot_act_on(files, body, status, reason):
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    answer = client.post("/webhook", json=body)
    assert answer.status_code == status and reason in json.dumps(answer.get_json())
    app.extensions["g4seg"].writeback.stop()


def test_webhook_without_label_studio_credentials_is_ignored_with_a_reason(client):
    answer = client.post("/webhook", json=webhook_body())
    assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"
    assert "LABEL_STUDIO_API_KEY" in answer.get_json()["reason"]


def test_webhook_queue_is_bounded(files):
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40,
                              writeback_queue_size=2)
    assert client.post("/webhook", json=webhook_body(annotation_id=1)).status_code == 200
    assert client.post("/webhook", json=webhook_body(annotation_id=2)).status_code == 200
    full = client.post("/webhook", json=webhook_body(annotation_id=3))  # the first two wait for Label Studio
    assert full.status_code == 503 and "busy" in full.get_json()["error"]
    app.extensions["g4seg"].writeback.stop()


def test_an_unreachable_queue_answers_503_and_serve_refuses_to_start(files, monkeypatch, capsys):
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{closed}/0"
    client, app = make_client(files, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40,
                              queue_url=url)
    answer = client.post("/webhook", json=webhook_body())
    assert answer.status_code == 503 and f"cannot reach the job queue at {url}" in answer.get_json()["error"]
    assert "cannot reach" in client.get("/health").get_json()["queue"]["error"]
    assert metric(client, "g4seg_queue_up") == 0
    app.extensions["g4seg"].writeback.stop()
    for name, value in {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k" * 40,
                        "G4SEG_QUEUE_URL": url}.items():
        monkeypatch.setenv(name, value)
    from g4seg_core.cli import main

    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("g4seg: error: cannot reach the job queue") and err.count("\n") == 1
