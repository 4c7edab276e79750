"""Human-labelled rounds through a real Label Studio server (the label-studio package from PyPI).

Excluded from the default run (``-m "not labelstudio"`` in pyproject's addopts) and skipped unless a
``label-studio`` executable is found: ``$LABEL_STUDIO`` (a path), else ``label-studio`` on PATH. Label Studio pulls
in Django and much else, so keep it out of activelab's venv::

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio
    LABEL_STUDIO=/tmp/lsvenv/bin/label-studio OMP_NUM_THREADS=1 .venv/bin/pytest -m labelstudio tests/integration

The test starts the server on 127.0.0.1 with a throw-away data folder, an admin user and an API token, and serves
the run's image previews through Label Studio's local-files storage. Round 0 and round 1 of a digits
classification run with the ``exchange`` oracle then go through it: create a project from the exported config,
import the exported tasks (round 1's with the model's suggestions as pre-annotations scored by the acquisition
score), submit annotations through the API as a person would (one skipped), export the project as JSON and
`activelab import` it; `activelab resume` then trains and runs the next round.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from activelab.cli import main
from activelab.loop import status
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import Env

EXECUTABLE = os.environ.get("LABEL_STUDIO") or shutil.which("label-studio")
pytestmark = [pytest.mark.labelstudio,
              pytest.mark.skipif(not EXECUTABLE or not Path(EXECUTABLE).exists(),
                                 reason="no label-studio executable (set $LABEL_STUDIO or put label-studio on PATH)")]

TOKEN = "activelab-test-token-0123456789"
PARAMS = {"data": {"kind": "digits", "max_pool": 60, "max_test": 30}, "epochs": 1, "min_steps": 2}


class Server:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body=None, raw: bool = False):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        return data if raw else (json.loads(data) if data else None)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(root / "home"), "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LATEST_VERSION_CHECK": "false", "OMP_NUM_THREADS": "1"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([EXECUTABLE, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(root / "data"), "--username", "admin@example.com",
                             "--password", "not-a-secret-123", "--user-token", TOKEN, "--enable-legacy-api-token"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = Server(f"http://127.0.0.1:{port}")
    deadline = time.time() + 300
    while True:
        try:
            server.call("GET", "/api/projects")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"Label Studio did not start; see {root / 'server.log'}:\n"
                            + (root / "server.log").read_text()[-3000:])
            time.sleep(1)
    yield server, root
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def stored(run: Path) -> dict[str, int]:
    db = sqlite3.connect(run / "labels.sqlite")
    try:
        return {i: json.loads(v) for i, v in db.execute("SELECT item_id, value FROM labels")}
    finally:
        db.close()


def test_two_rounds_labelled_in_label_studio(label_studio):
    server, root = label_studio
    recipe = {"name": "digits_people", "task": {"name": "classification", "params": PARAMS},
              "scorer": {"name": "entropy"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 6, "batch": 4}}
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = root / "run"
    assert main(["run", str(root / "r.yaml"), "--out", str(run), "-q"]) == 0
    assert status(run)["status"] == "awaiting labels"
    truth = ClassificationTask(ClassificationTask.Config(**PARAMS), Env(progress=False))
    media = ["--media-url", "/data/local-files/?d=", "--media-root", str(root)]

    # round 0: a project from the exported config, the tasks imported through the API
    assert main(["export", str(run), "--format", "label-studio", "--out", str(root / "r0.json"), *media]) == 0
    project = server.call("POST", "/api/projects", {"title": "activelab digits",
                                                    "label_config": (root / "r0.xml").read_text()})
    # Label Studio serves a local file only under a project's local-files storage: one on the run folder
    server.call("POST", "/api/storages/localfiles", {"project": project["id"], "path": str(run),
                                                     "title": "run folder", "use_blob_urls": False})
    answer = server.call("POST", f"/api/projects/{project['id']}/import", json.loads((root / "r0.json").read_text()))
    assert answer["task_count"] == 6
    tasks = server.call("GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    png = server.call("GET", tasks[0]["data"]["image"], raw=True)           # the image URL works
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    def annotate(task, choice=None, skip=False):
        body = {"result": [] if skip else [{"from_name": "label", "to_name": "image", "type": "choices",
                                            "value": {"choices": [choice]}}], "was_cancelled": skip}
        server.call("POST", f"/api/tasks/{task['id']}/annotations", body)

    skipped = tasks[-1]["data"]["item_id"]
    for task in tasks[:-1]:
        annotate(task, truth.classes[truth.true_label(task["data"]["item_id"])])
    annotate(tasks[-1], skip=True)
    export = root / "export0.json"
    export.write_bytes(server.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON", raw=True))
    assert main(["import", str(run), str(export)]) == 0
    expected = {t["data"]["item_id"]: truth.true_label(t["data"]["item_id"]) for t in tasks[:-1]}
    assert stored(run) == expected
    assert main(["import", str(run), str(export)]) == 0                     # twice: nothing changes
    assert stored(run) == expected

    # the next round runs: trains on the 5 labels and asks for 4 more
    assert main(["resume", str(run), "-q"]) == 0
    info = status(run)
    assert (info["status"], info["round"], info["outstanding"]) == ("awaiting labels", 1, 4)

    # round 1 into the same project: the suggestions arrive as pre-annotations scored by the acquisition score
    assert main(["export", str(run), "--format", "label-studio", "--out", str(root / "r1.json"), *media]) == 0
    answer = server.call("POST", f"/api/projects/{project['id']}/import", json.loads((root / "r1.json").read_text()))
    assert answer["task_count"] == 4 and answer["prediction_count"] == 4
    tasks = [t for t in server.call("GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
             if t["data"]["round"] == 1]
    predictions = server.call("GET", f"/api/predictions?project={project['id']}")
    by_task = {p["task"]: p for p in predictions}
    for task in tasks:
        assert by_task[task["id"]]["score"] == pytest.approx(task["data"]["score"])
    # the person accepts the first suggestion and gives the true class for the others
    first = by_task[tasks[0]["id"]]["result"][0]["value"]["choices"][0]
    annotate(tasks[0], first)
    for task in tasks[1:]:
        annotate(task, truth.classes[truth.true_label(task["data"]["item_id"])])
    export = root / "export1.json"
    export.write_bytes(server.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON", raw=True))
    assert main(["import", str(run), str(export)]) == 0                     # holds round 0's tasks too
    labels = stored(run)
    assert labels[tasks[0]["data"]["item_id"]] == truth.classes.index(first)
    assert len(labels) == 9 and (skipped in labels) == (skipped in [t["data"]["item_id"] for t in tasks])
    assert main(["resume", str(run), "-q"]) == 0
    assert status(run)["status"] == "done"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
