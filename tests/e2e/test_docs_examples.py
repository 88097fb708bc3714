"""The README's "For dialers" and "For email platforms" examples, run for real against a worker (on the cluster
profile too: tests/cluster/test_docs_examples_cluster.py runs the same against 3 brokers and a Redis Cluster)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import orjson

from streams.redis_keys import block_key, parse_redis_url
from tests.e2e.harness import REPO, GuardDeployment


def test_readme_sender_examples_work(deployment_factory: Callable[..., GuardDeployment]):
    run_readme_sender_examples(deployment_factory())


def redis_cli_target(url: str) -> list[str]:
    """How redis-cli reaches ``url``: ``-u URL``, or on a Redis Cluster ``-c -h HOST -p PORT`` (follow redirects)."""
    target = parse_redis_url(url)
    if not target.cluster:
        return ["-u", url]
    host, port = target.startup_nodes[0]
    return ["-c", "-h", host, "-p", str(port)]


def run_readme_sender_examples(deployment: GuardDeployment) -> None:
    deployment.create_topics()
    deployment.start_worker("w1")
    now = int(time.time() * 1000)
    events = [
        {"type": "contact", "event_id": "d1", "customer_id": "cust-42", "ts": now, "channel": "call"},
        {"type": "unsubscribe", "event_id": "d2", "customer_id": "cust-43", "ts": now, "channel": "email"},
    ]
    # the README's way to send: fatigue send (keyed by customer_id)
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "fatigue.cli",
            "send",
            *(orjson.dumps(e).decode() for e in events),
            "--bootstrap",
            deployment.bootstrap,
            "--topic",
            deployment.topics["events"],
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert "sent 2 event(s)" in sent.stderr
    deployment.wait_until_settled(stable_s=5)
    topic = deployment.topics["decisions"]

    dialer = subprocess.run(
        [sys.executable, "docs/examples/dialer.py", deployment.bootstrap, topic, "cust-42"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert dialer.stdout.startswith("do not call cap"), dialer.stdout + dialer.stderr

    kcat = subprocess.run(
        ["kcat", "-b", deployment.bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k => %s\\n"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "call:cust-42 => " in kcat.stdout and "email:cust-43 => " in kcat.stdout

    prefix = deployment.redis_prefix
    email = subprocess.run(
        [sys.executable, "docs/examples/email_precheck.py", deployment.redis_url, "cust-43", "cust-44"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "FATIGUE_REDIS_PREFIX": prefix},
    )
    assert email.stdout.splitlines() == [
        "cust-43 Verdict(allowed=False, reason='unsubscribe', until=None)",
        "send to: ['cust-44'] removed: {'unsubscribe': 1}",
    ], email.stdout + email.stderr
    redis_cli = subprocess.run(
        ["redis-cli", *redis_cli_target(deployment.redis_url), "GET", block_key(prefix, "email", "cust-43")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert orjson.loads(redis_cli.stdout)["reason"] == "unsubscribe"
    filtered = subprocess.run(
        [
            sys.executable,
            "-m",
            "fatigue.cli",
            "filter",
            "--channel",
            "email",
            "-",
            "--redis-url",
            deployment.redis_url,
            "--prefix",
            prefix,
        ],
        input="cust-42\ncust-43\ncust-44\n",
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert filtered.stdout.split() == ["cust-42", "cust-44"]
    assert "removed (unsubscribe 1)" in filtered.stderr
