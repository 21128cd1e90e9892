"""Label Studio stopped for 3 minutes while webhooks arrive: every write-back lands after it returns.

Two servers go through the same outage, one on the embedded SQLite queue and one on a real Redis,
each with its own project. Some webhooks come from Label Studio just before it stops (the test
holds each queue's lease meanwhile, so none is written early); others arrive during the outage
(the payloads Label Studio would send, built from its API before it stopped), as from a second
Label Studio replica. The servers keep retrying with backoff (capped at 10 s here) and write
every prediction, once, after Label Studio is back.

The outage takes 3 minutes of wall time on purpose; this module runs nothing else, and
tests/run.sh runs it in a pytest of its own beside the rest of the suite, so the wait costs no wall
time. It stops and restarts that session's Label Studio (same data, port and token).
"""
from __future__ import annotations

import contextlib
import time

import pytest
from test_labelstudio_backend import rough_box
from test_writeback_queue import annotate, assert_all_written_once, lease_held, queue_of, written

pytestmark = pytest.mark.e2e

OUTAGE_S = 180


def test_a_three_minute_label_studio_outage_loses_no_writeback(label_studio, start_backend, label_config_xml,
                                                               test_images, redis_url, tmp_path):
    common = {"G4SEG_ENGINE": "classic", "G4SEG_WRITEBACK_BACKOFF": "1", "G4SEG_WRITEBACK_MAX_DELAY": "10",
              "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    envs = {"sqlite": dict(common, G4SEG_DATA_DIR=str(tmp_path / "queue")),
            "redis": dict(common, G4SEG_QUEUE_URL=redis_url)}
    ls = label_studio
    with contextlib.ExitStack() as stack:
        queues = {kind: stack.enter_context(queue_of(env)) for kind, env in envs.items()}
        leases = {kind: stack.enter_context(contextlib.ExitStack()) for kind in envs}
        for kind, queue in queues.items():
            leases[kind].enter_context(lease_held(queue))
        servers, early, late, bodies = {}, {}, {}, {}
        for seed, (kind, env) in enumerate(envs.items()):
            images = test_images(4, seed=50 + seed)
            project = ls.create_project(label_config_xml, title=f"e2e outage {kind}")
            tasks = list(zip(ls.import_images(project, [path for path, _ in images]),
                             [rough_box(mask) for _, mask in images]))
            late[kind] = annotate(ls, tasks[2:])  # saved before the backend is connected: no webhook yet
            # Read before the backend is connected: with one, GET /api/tasks/<id> asks it for a prediction.
            project_body = ls.call("GET", f"/api/projects/{project}")
            bodies[kind] = [{"action": "ANNOTATION_CREATED", "project": project_body,
                             "task": ls.call("GET", f"/api/tasks/{task}"),
                             "annotation": ls.call("GET", f"/api/annotations/{annotation}")}
                            for task, annotation in late[kind]]
            servers[kind] = start_backend(env)
            ls.register_ml_backend(project, servers[kind].url, basic_auth=servers[kind].auth)
            early[kind] = annotate(ls, tasks[:2])  # Label Studio sends these webhooks
        for kind, queue in queues.items():
            deadline = time.monotonic() + 60
            while queue.stats()["queued"] < 2:
                assert time.monotonic() < deadline, f"{kind}: Label Studio's webhooks never queued"
                time.sleep(0.2)

        ls.stop()
        down_at = time.monotonic()
        try:
            for lease in leases.values():
                lease.close()  # the servers start consuming: every try fails to connect
            for index in range(2):  # webhooks keep arriving during the outage
                for kind, server in servers.items():
                    answer = server.post("/webhook", bodies[kind][index])
                    assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
                time.sleep(OUTAGE_S / 2 - 5)
            for kind, server in servers.items():
                queue = server.get("/health").json()["queue"]
                assert queue["queued"] == 4 and queue["retrying"] >= 1 and queue["dead_letters"] == 0, (kind, queue)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        finally:
            ls.start_again()  # also when the test failed: the session's other tests need it
        back_at = time.monotonic()
        for kind in envs:
            assert_all_written_once(ls, early[kind] + late[kind], timeout=120)
        print(f"outage {back_at - down_at:.0f} s; every write-back landed {time.monotonic() - back_at:.0f} s "
              "after Label Studio answered again")
        for kind, queue in queues.items():
            assert queue.stats() == {"queued": 0, "retrying": 0, "dead_letters": 0}, kind
        for server in servers.values():
            server.stop()
    assert all(written(ls, t, a) for pairs in (*early.values(), *late.values()) for t, a in pairs)
