"""``steerlab serve --replicas 2`` on a real local Ray cluster, through Ray Serve's proxy.

The command runs as a real process (``python -m engine serve``) joining the session's Ray
cluster (``tests/ray_cluster.py``, 2 CPUs: one per replica). Its replicas serve a copy of the
store the single-server tests use (``tests/serving.py``), so their greedy answers are compared
with what ``steerlab run`` stored and with what the single server answers. A replica process
killed with SIGKILL is replaced by Serve's controller; a request that fails while it is
being replaced is sent again, at most 3 times (the only retries in this module). The module
ends by stopping the command with SIGTERM, which removes the replicas and shuts Serve down,
so the cluster's 2 CPUs are free for the next tests.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, needs_models
from tests.ray_cluster import RayCluster
from tests.ray_cluster import ray_head as ray_head
from tests.serving import ADMIN_KEY, API_KEY, EXPERIMENT, NEW_TOKENS, Served, stored_responses

pytestmark = [needs_models, pytest.mark.timeout(300)]

REPLICAS = 2
REPLICA_HEADER = "x-steerlab-replica"
PROCESS_HEADER = "x-steerlab-replica-process"
STARTUP_S = 240.0  # Serve's controller, proxy and two model loads on a busy 2-core machine
RETRIES = 3  # a request that fails while a killed replica is replaced is sent again, at most this often


@dataclass
class Replicas:
    process: subprocess.Popen[str]
    output: Path
    port: int
    db: Path
    served: Served
    env: dict[str, str]
    seen: set[str] = field(default_factory=set)  # the replicas that answered so far

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=API_KEY, max_retries=0, timeout=60)

    def store(self) -> Any:
        from db.store import Store

        return Store(str(self.db))

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # a poll, not a wait for an assumed duration


def serve_command(db: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--experiment",
        EXPERIMENT,
        "--db",
        str(db),
        "--port",
        str(port),
        "--replicas",
        str(REPLICAS),
        *extra,
    ]


def cli_env(cluster: RayCluster, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        **cluster.env,
        "RAY_ADDRESS": cluster.address,
        "STEERLAB_API_KEY": API_KEY,
        "STEERLAB_ADMIN_KEY": ADMIN_KEY,
        **more,
    }


def copy_store(served: Served, target: Path) -> Path:
    """The served store's SQLite file, copied (SQLite's backup API: consistent while it is written)."""
    source = make_url(served.store.url).database
    assert source is not None
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


@pytest.fixture(scope="module")
def replicas(served: Served, ray_head: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    folder = tmp_path_factory.mktemp("replicas")
    db = copy_store(served, folder / "replicas.db")
    port = free_port()
    output = folder / "serve.out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            serve_command(db, port, "--device", "cpu"),
            cwd=ROOT,
            env=cli_env(ray_head),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = Replicas(process, output, port, db, served, cli_env(ray_head))
    try:
        wait_for(
            lambda: "Serving " in output.read_text() or process.poll() is not None, STARTUP_S, "the replicas to start"
        )
        assert process.poll() is None, f"`steerlab serve --replicas` exited:\n{running.log()}"
        yield running
    finally:
        stop(running)


def stop(running: Replicas) -> None:
    """SIGTERM, as an operator's service manager would; a stuck command is killed and Serve shut down."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(90)
            return
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(30)
    if running.process.returncode not in (0, None):
        release = "import ray; from ray import serve; ray.init(); serve.shutdown()"
        subprocess.run([sys.executable, "-c", release], env=running.env, timeout=120, check=False)


def completion(replicas: Replicas, model: str, prompt: str, **extra: Any) -> tuple[Any, str]:
    """A greedy completion through the proxy, and the replica that answered it."""
    raw = replicas.client().completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, **extra
    )
    replica = raw.headers[REPLICA_HEADER]
    replicas.seen.add(replica)
    return raw.parse(), replica


def streamed(replicas: Replicas, model: str, prompt: str, **extra: Any) -> tuple[str, str, str]:
    """The text and response id of a streamed greedy completion, and the replica that streamed it."""
    raw = replicas.client().completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stream=True, **extra
    )
    replica = raw.headers[REPLICA_HEADER]
    replicas.seen.add(replica)
    chunks = list(raw.parse())
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks[0].id, replica


def test_an_unreachable_cluster_is_one_sentence_and_nothing_is_served(served: Served, tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    done = subprocess.run(
        serve_command(Path(make_url(served.store.url).database or ""), port, "--executor", f"ray://127.0.0.1:{closed}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: The Ray cluster at ray://127.0.0.1:{closed} does not answer"
    )
    assert "Nothing was run locally in its place." in lines[0]
    assert "Serving" not in done.stdout and not listening(port)


def test_gpus_on_a_cpu_cluster_are_one_sentence(served: Served, ray_head: RayCluster) -> None:
    port = free_port()
    done = subprocess.run(
        serve_command(Path(make_url(served.store.url).database or ""), port, "--device", "cuda"),
        cwd=ROOT,
        env=cli_env(ray_head),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(error) == 1, done.stderr
    assert f"has 0 GPUs, but steerlab serve --replicas {REPLICAS} asks for {REPLICAS}" in error[0]
    assert "Serving" not in done.stdout and not listening(port)


def test_the_replicas_answer_what_steerlab_run_stored_streamed_or_not(replicas: Replicas) -> None:
    ids: list[str] = []
    for variant in ("sad_x2", "prompt_sad"):
        for index, prompt in enumerate(replicas.served.prompts):
            expected = replicas.served.run_texts[(variant, index)]
            whole, _ = completion(replicas, f"{EXPERIMENT}/{variant}", prompt)
            assert whole.choices[0].text == expected
            text, stream_id, _ = streamed(replicas, f"{EXPERIMENT}/{variant}", prompt)
            assert text == expected
            ids += [whole.id, stream_id]
    # The same answers as the single server, chat too.
    messages = [{"role": "user", "content": "Tell me about a sad dog."}]
    single = replicas.served.client().chat.completions.create(
        model=f"{EXPERIMENT}/sad_x1", messages=messages, max_tokens=8, temperature=0
    )
    for _ in range(4):
        raw = replicas.client().chat.completions.with_raw_response.create(
            model=f"{EXPERIMENT}/sad_x1", messages=messages, max_tokens=8, temperature=0
        )
        replicas.seen.add(raw.headers[REPLICA_HEADER])
        answer = raw.parse()
        assert answer.choices[0].message.content == single.choices[0].message.content
        ids.append(answer.id)
    # Serve's router spreads requests: both replicas answer (a few more requests if these all went to one).
    deadline = time.monotonic() + 60
    while len(replicas.seen) < REPLICAS:
        assert time.monotonic() < deadline, "only one replica answered"
        ids.append(completion(replicas, f"{EXPERIMENT}/baseline", replicas.served.prompts[0])[0].id)
    # Every response stored once, whichever replica gave it.
    stored = stored_responses(replicas.store())
    assert len(set(ids)) == len(ids) and all(i in stored for i in ids)
    for whole_id in ids:
        assert stored[whole_id].response_text


def test_a_kill_switch_reaches_every_replica(replicas: Replicas) -> None:
    from service.access import LOCAL
    from service.deployments import create_deployment, resume_variant

    store = replicas.store()
    create_deployment(store, LOCAL, "mood-replicas", EXPERIMENT, {"sad_x2": 1.0, "baseline": 0.0}, baseline="baseline")
    prompt = replicas.served.prompts[0]
    steered, baseline = replicas.served.run_texts[("sad_x2", 0)], replicas.served.run_texts[("baseline", 0)]
    assert steered != baseline

    def every_replica_answers(text: str) -> Callable[[], bool]:
        answered: dict[str, str] = {}

        def check() -> bool:
            try:
                answer, replica = completion(replicas, "mood-replicas", prompt, user="bob")
            except Exception:  # "not served here" until that replica's next poll
                return False
            answered[replica] = answer.choices[0].text
            return len(answered) == REPLICAS and all(t == text for t in answered.values())

        return check

    wait_for(every_replica_answers(steered), 30, "both replicas to serve the new deployment")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    switched = httpx.post(f"{replicas.base_url}/deployments/mood-replicas/variants/sad_x2/stop", headers=admin)
    assert switched.status_code == 200, switched.text
    stopped_by = switched.headers[REPLICA_HEADER]
    # The replica that took the switch applies it at once; the other within its poll of the store.
    wait_for(every_replica_answers(baseline), 10, "the kill switch to reach both replicas")
    for _ in range(6):
        answer, replica = completion(replicas, "mood-replicas", prompt, user="bob")
        assert answer.choices[0].text == baseline, replica
    assert stopped_by in replicas.seen
    # From the store (the CLI's `steerlab deploy` and the dashboard write there): both replicas follow.
    resume_variant(store, LOCAL, "mood-replicas", "sad_x2")
    wait_for(every_replica_answers(steered), 10, "the resume to reach both replicas")


def test_feedback_through_the_proxy_is_stored(replicas: Replicas) -> None:
    from sqlalchemy import select

    from db.schema import ResponseFeedback

    answer, _ = completion(replicas, f"{EXPERIMENT}/baseline", replicas.served.prompts[1], user="carol")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"response_id": answer.id, "thumbs": "up", "user": "carol", "comment": "via a replica"}
    given = httpx.post(f"{replicas.base_url}/feedback", json=body, headers=headers)
    assert given.status_code == 200, given.text
    store = replicas.store()
    response = stored_responses(store)[answer.id]
    with store.session() as session:
        rows = session.scalars(select(ResponseFeedback).where(ResponseFeedback.response_id == response.id)).all()
    assert [(r.thumbs, r.comment) for r in rows] == [("up", "via a replica")]


def test_a_killed_replica_is_replaced(replicas: Replicas) -> None:
    _, victim = completion(replicas, f"{EXPERIMENT}/baseline", replicas.served.prompts[0])
    health = httpx.get(f"{replicas.base_url.removesuffix('/v1')}/health")
    for _ in range(20):  # find the victim's process: the header names HOST:PID of the replica that answered
        if health.headers[REPLICA_HEADER] == victim:
            break
        health = httpx.get(f"{replicas.base_url.removesuffix('/v1')}/health")
    assert health.headers[REPLICA_HEADER] == victim
    pid = int(health.headers[PROCESS_HEADER].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)

    expected = replicas.served.run_texts[("baseline", 0)]
    after: set[str] = set()

    def answered() -> bool:
        for attempt in range(RETRIES + 1):
            try:
                answer, replica = completion(replicas, f"{EXPERIMENT}/baseline", replicas.served.prompts[0])
            except Exception:
                if attempt == RETRIES:
                    raise
                continue
            assert answer.choices[0].text == expected
            after.add(replica)
            return True
        return False

    # Requests keep being answered, and a new replica joins the one that survived.
    wait_for(lambda: answered() and len(after - {victim}) == REPLICAS, 120, "the killed replica to be replaced")
    assert victim not in after


def test_sigterm_drains_the_replicas_and_frees_the_cluster(replicas: Replicas) -> None:
    import json

    body = {"model": f"{EXPERIMENT}/baseline", "prompt": replicas.served.prompts[0], "max_tokens": 120}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{replicas.base_url}/completions", json={**body, "stream": True, "ignore_eos": True}, headers=headers
    ) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(lines).removeprefix("data: "))
        replicas.process.send_signal(signal.SIGTERM)  # while the stream runs
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"  # the open stream was finished, not cut
    assert replicas.process.wait(90) == 0, replicas.log()
    assert first["id"] in stored_responses(replicas.store())
    assert not listening(replicas.port)  # Serve's proxy is gone with the application
