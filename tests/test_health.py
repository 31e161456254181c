"""Health checks (``--health-port``): a worker process probed over HTTP, as a container orchestrator does."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fasttasks.compat import TaskResultStatus

from tests import worker_tasks
from tests.test_worker_process import REPO, lines, run_to_end, wait_for, worker_command, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120), pytest.mark.slow]

#: The event the worker logs once its health server listens (port 0 = a free port, chosen by the system).
HEALTH_EVENT = re.compile(r"health checks on http://127\.0\.0\.1:(\d+) ")
HEALTH_FLAGS = ("--health-port", "0", "--health-host", "127.0.0.1", "--heartbeat", "0.2", "--dead-after", "1")


class RunningWorker:
    """A worker process whose output is read as it comes (to find the port while it runs)."""

    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen(
            worker_command(*flags),
            cwd=REPO,
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def health_port(self) -> int:
        wait_for(
            lambda: HEALTH_EVENT.search(self.text()) is not None or self.process.poll() is not None,
            what="the health-checks event",
        )
        found = HEALTH_EVENT.search(self.text())
        assert found, self.text()
        return int(found.group(1))

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code, self.text()


@pytest.fixture
def start_health_worker() -> Iterator[Callable[..., RunningWorker]]:
    started: list[RunningWorker] = []

    def start(*flags: str) -> RunningWorker:
        worker = RunningWorker(*HEALTH_FLAGS, *flags)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def probe(port: int, path: str, method: str = "GET") -> tuple[int, str | None, Any]:
    """(status, Content-Type, decoded JSON body) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        return response.status, response.getheader("Content-Type"), json.loads(body) if body else None
    finally:
        connection.close()


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_running_worker_answers_live_ready_and_health(
    tmp_path: Path, start_health_worker: Callable[..., RunningWorker]
) -> None:
    worker = start_health_worker()
    port = worker.health_port()

    live = {"status": "live", "worker_id": "process-worker"}
    assert probe(port, "/live") == (200, "application/json", live)
    wait_for(lambda: probe(port, "/ready")[0] == 200, timeout=10, what="/ready to answer 200")
    wait_for(lambda: probe(port, "/health")[2]["leader"] is True, timeout=10, what="the leader lease")
    status, content_type, health = probe(port, "/health")
    assert (status, content_type) == (200, "application/json")
    assert (health["status"], health["worker_id"], health["backend"]) == (
        "ready",
        "process-worker",
        "default",
    )
    assert health["stopping"] is False
    first = datetime.fromisoformat(health["last_heartbeat"])
    assert first.tzinfo == UTC
    assert abs((datetime.now(UTC) - first).total_seconds()) < 2
    assert 0 <= health["seconds_since_heartbeat"] < 1
    # Heartbeats move forward (every 0.2 s here), and the counters follow the work.
    wait_for(
        lambda: datetime.fromisoformat(probe(port, "/health")[2]["last_heartbeat"]) > first,
        timeout=5,
        what="a later heartbeat",
    )
    worker_tasks.record.enqueue(str(tmp_path / "marks"), "done")
    wait_for(lambda: probe(port, "/")[2]["succeeded"] == 1, timeout=10, what="the task in the counters")
    assert probe(port, "/nope")[:2] == (404, "application/json")

    worker.process.send_signal(signal.SIGTERM)
    code, output = worker.finish()
    assert code == 0, output
    assert port_is_closed(port)


def test_ready_turns_503_while_the_worker_stops(
    tmp_path: Path, start_health_worker: Callable[..., RunningWorker]
) -> None:
    marks = tmp_path / "marks"
    result = worker_tasks.sleep_then_record.enqueue(str(marks), "long", 3)
    worker = start_health_worker("--concurrency", "1")
    port = worker.health_port()
    wait_for(lambda: "start long" in lines(marks), what="the long task to start")
    assert probe(port, "/ready")[0] == 200

    worker.process.send_signal(signal.SIGTERM)
    wait_for(lambda: probe(port, "/ready")[0] == 503, timeout=5, what="/ready to answer 503")
    status, _, body = probe(port, "/ready")
    assert (status, body["status"], body["stopping"], body["in_flight"]) == (503, "stopping", True, 1)
    # Still live: the orchestrator must not kill a worker that is finishing its tasks.
    assert probe(port, "/live")[0] == 200
    assert "end long" not in lines(marks)

    code, output = worker.finish()
    assert code == 0, output
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert port_is_closed(port)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda *flags: worker_command(*flags), id="fasttasks-worker"),
        pytest.param(
            lambda *flags: [sys.executable, "-m", "django", "fasttasks_worker", *flags], id="manage.py"
        ),
    ],
)
def test_a_port_in_use_is_a_clear_startup_error(tmp_path: Path, command: Callable[..., list[str]]) -> None:
    waiting = worker_tasks.record.enqueue(str(tmp_path / "marks"), "never")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = run_to_end(command("--batch", "--health-host", "127.0.0.1", "--health-port", str(port)))
    assert finished.returncode == 1, finished.stderr
    assert f"cannot serve health checks on 127.0.0.1:{port}" in finished.stderr
    assert "in use" in finished.stderr
    assert "Traceback" not in finished.stderr
    # It stopped before claiming anything.
    waiting.refresh()
    assert waiting.status == TaskResultStatus.READY


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_health_port_is_a_flag_error(port: str) -> None:
    finished = run_to_end(worker_command("--batch", "--health-port", port))
    assert finished.returncode == 2
    assert "--health-port" in finished.stderr


def test_stats_report_the_last_heartbeat() -> None:
    from fasttasks._core import Worker
    from fasttasks._runner import Runner
    from fasttasks._worker import database_settings

    runner = Runner("default", "stats-worker", 1)
    worker = Worker(
        database_settings("default"),
        runner,
        backend="default",
        worker_id="stats-worker",
        concurrency=1,
        heartbeat_interval=0.2,
        dead_after=1.0,
    )
    assert (worker.stats()["last_heartbeat"], worker.stats()["leader"]) == (None, False)
    before = time.time()
    worker.start()
    try:
        wait_for(lambda: worker.stats()["leader"], timeout=10, what="the first maintenance round")
        first = worker.stats()["last_heartbeat"]
        assert first is not None and before - 1 <= first <= time.time()
        wait_for(
            lambda: (worker.stats()["last_heartbeat"] or 0) > first, timeout=5, what="the next heartbeat"
        )
    finally:
        worker.stop()
        assert worker.wait(30)
        runner.close()
    assert worker.result()["last_heartbeat"] is not None
