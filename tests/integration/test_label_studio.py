"""Human-labelled rounds through a real Label Studio server (the label-studio package from PyPI).

Part of the default run (CI included); deselect it with ``-m "not labelstudio"``. Label Studio pulls in Django,
numpy, pandas and much else, so it never goes into activelab's venv: the module's fixture runs
``scripts/labelstudio_venv.sh``, which builds a separate virtualenv at ``.cache/labelstudio-venv`` (git-ignored;
``$LABEL_STUDIO_VENV`` moves it) with the label-studio release pinned there, or reuses it when its marker file says it
is complete (an install killed half-way is rebuilt). That install needs PyPI and takes about a minute on a fresh
machine, the server's first start (database migrations) one to two more; without network the test fails and says so.
To use a Label Studio installed elsewhere instead, point ``$LABEL_STUDIO`` at its executable::

    LABEL_STUDIO=/opt/ls/bin/label-studio OMP_NUM_THREADS=1 .venv/bin/pytest -m labelstudio tests/integration

The fixture starts the server on 127.0.0.1 (a free port) with a throw-away data folder, an admin user and an API
token, telemetry, error reporting and the version check off and any other HTTP(S) traffic sent to a dead proxy, and
stops it at the end of the module, also when the test fails. The run's image previews are served through Label
Studio's local-files storage. Round 0 and round 1 of a digits classification run with the ``exchange`` oracle then go
through it: create a project from the exported config, import the exported tasks (round 1's with the model's
suggestions as pre-annotations scored by the acquisition score), submit annotations through the API as a person would
(one skipped), export the project as JSON and `activelab import` it; `activelab resume` then trains and runs the next
round.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from activelab.cli import main
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import Env
from activelab.run import status

pytestmark = pytest.mark.labelstudio

REPO = Path(__file__).resolve().parents[2]
VENV_SCRIPT = REPO / "scripts" / "labelstudio_venv.sh"
INSTALL_TIMEOUT_S = 1200
START_TIMEOUT_S = 600
TOKEN = "activelab-test-token-0123456789"
PARAMS = {"data": {"kind": "digits", "max_pool": 60, "max_test": 30}, "epochs": 1, "min_steps": 2}


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL (Linux), so no server outlives the run."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)         # PR_SET_PDEATHSIG


def stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Stops a child started in a session of its own, and all it started: SIGTERM, SIGKILL after grace_s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)                   # whatever is left of its process group
    except ProcessLookupError:
        pass
    proc.wait()


def label_studio_executable() -> str:
    """$LABEL_STUDIO when set, else the pinned install in .cache/labelstudio-venv (built here when missing)."""
    given = os.environ.get("LABEL_STUDIO")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            pytest.fail(f"LABEL_STUDIO={given!r} is not an executable file")
        return given
    venv = Path(os.environ.get("LABEL_STUDIO_VENV") or REPO / ".cache" / "labelstudio-venv").absolute()
    log_path = venv.with_name(venv.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(VENV_SCRIPT)], cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "LABEL_STUDIO_VENV": str(venv), "PYTHON": sys.executable},
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            out, _ = proc.communicate(timeout=INSTALL_TIMEOUT_S)
            problem = None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            problem = f"no result after {INSTALL_TIMEOUT_S} s"
        finally:
            if proc.poll() is None:                 # timed out or interrupted: not a half-install left running
                stop(proc, grace_s=0)
    lines = out.strip().splitlines() if problem is None else []
    if problem or not lines or not os.access(lines[-1], os.X_OK):
        pytest.fail(f"could not install Label Studio ({VENV_SCRIPT.relative_to(REPO)}: {problem or 'no executable'});"
                    f" it needs PyPI, or set LABEL_STUDIO to an installed label-studio executable. "
                    f"Log {log_path}:\n" + log_path.read_text()[-3000:], pytrace=False)
    return lines[-1]


class Server:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))     # straight to 127.0.0.1, never a proxy

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body=None, raw: bool = False):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Token {TOKEN}",
                                                  "Content-Type": "application/json"})
        with self.opener.open(request, timeout=120) as response:
            data = response.read()
        return data if raw else (json.loads(data) if data else None)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    executable = label_studio_executable()
    root = tmp_path_factory.mktemp("ls")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update({"HOME": str(root / "home"), "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
                "OMP_NUM_THREADS": "1",
                # only 127.0.0.1: no version check, telemetry or error reports; any other HTTP(S) to a dead proxy
                "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "", "FEATURE_FLAGS_OFFLINE": "true",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([executable, "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(root / "data"),
                                 "--username", "admin@example.com", "--password", "not-a-secret-123",
                                 "--user-token", TOKEN, "--enable-legacy-api-token"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
                                start_new_session=True, preexec_fn=die_with_parent)
    try:
        server = Server(f"http://127.0.0.1:{port}")
        started = time.time()
        while True:
            try:
                server.call("GET", "/api/projects")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.time() > started + START_TIMEOUT_S:
                    why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                           else f"did not answer within {START_TIMEOUT_S} s")
                    pytest.fail(f"Label Studio ({executable}) {why}; {log_path}:\n" + log_path.read_text()[-3000:],
                                pytrace=False)
                time.sleep(1)
        print(f"Label Studio {executable} up on port {port} after {time.time() - started:.0f} s")
        yield server, root
    finally:
        stop(proc)


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
