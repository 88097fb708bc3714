"""The README's sender-side examples, run for real against a worker (on the cluster profile too:
tests/cluster/test_docs_examples_cluster.py runs the same against 3 brokers and a Redis Cluster).

The shell commands are read from README.md ("Send an event and see its decision", "For dialers") and run with bash
as written, with only the deployment's bootstrap, topics, Redis URL and key prefix substituted; then "For dialers"
and "For email platforms" (docs/examples/dialer.py, email_precheck.py, redis-cli, `fatigue filter`)."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from fatigue.clock import partition_for_key
from streams.redis_keys import block_key, parse_redis_url
from tests.e2e.harness import REPO, GuardDeployment

DAY_MS = 86_400_000


def test_readme_sender_examples_work(deployment_factory: Callable[..., GuardDeployment]) -> None:
    run_readme_sender_examples(deployment_factory())


def redis_cli_target(url: str) -> list[str]:
    """How redis-cli reaches ``url``: ``-u URL``, or on a Redis Cluster ``-c -h HOST -p PORT`` (follow redirects)."""
    target = parse_redis_url(url)
    if not target.cluster:
        return ["-u", url]
    host, port = target.startup_nodes[0]
    return ["-c", "-h", host, "-p", str(port)]


def readme_shell_commands() -> list[str]:
    """The README's "Send an event and see its decision" shell block, one command a line (continuations joined),
    then the shell commands of "For dialers" ("From a shell: `fatigue follow ...`, or `kcat ...`")."""
    text = (REPO / "README.md").read_text()
    block = text.split("### Send an event and see its decision", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    dialers = text.split("## For dialers", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"From a shell: `(fatigue follow [^`]*)` .*?`(kcat [^`]*)`", dialers, re.DOTALL)
    assert shell, "README: For dialers has no `fatigue follow` / `kcat` shell commands"
    return [*lines, shell[1], shell[2]]


class ReadmeShell:
    """Runs the README's commands against one deployment: its bootstrap, topics, Redis URL and prefix in place of
    the defaults the README shows (nothing may be left pointing at the shared `fatigue.*.v1` topics or keys)."""

    def __init__(self, deployment: GuardDeployment) -> None:
        self.deployment = deployment
        self.commands = readme_shell_commands()
        self.ran: list[str] = []
        topics = deployment.topics
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("FATIGUE_")}
        self.env.update(
            PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}",  # the venv's fatigue
            FATIGUE_BOOTSTRAP=deployment.bootstrap,
            FATIGUE_REDIS_URL=deployment.redis_url,
            FATIGUE_REDIS_PREFIX=deployment.redis_prefix,
            FATIGUE_EVENTS_TOPIC=topics["events"],
            FATIGUE_DECISIONS_TOPIC=topics["decisions"],
        )
        self.substitutions = [
            (".venv/bin/fatigue ", "fatigue "),
            ("fatigue.events.v1", topics["events"]),
            ("fatigue.blocks.v1", topics["decisions"]),
            ("fatigue.dlq.v1", topics["dlq"]),
            ("'fatigue:{c:", f"'{deployment.redis_prefix}:{{c:"),
            ('redis-cli -u "$FATIGUE_REDIS_URL"', shlex.join(["redis-cli", *redis_cli_target(deployment.redis_url)])),
            ("127.0.0.1:19092", '"$FATIGUE_BOOTSTRAP"'),
            ("localhost:6066", f"localhost:{self.web_port()}"),
        ]

    def web_port(self) -> str:
        args = [str(arg) for arg in self.deployment.workers["w1"].args]  # type: ignore[union-attr]
        return args[args.index("--web-port") + 1]

    def command(self, marker: str) -> str:
        """The one README command containing ``marker``, with this deployment substituted."""
        found = [command for command in self.commands if marker in command]
        assert len(found) == 1, f"README: {len(found)} shell command(s) contain {marker!r}: {found}"
        command = found[0]
        for old, new in self.substitutions:
            command = command.replace(old, new)
        assert not re.search(r"fatigue\.\w+\.v1|'fatigue:|:19092", command), command
        return command

    def run(self, label: str, marker: str, extra: str = "") -> subprocess.CompletedProcess[str]:
        """Run the README command containing ``marker`` (``extra`` appended) with bash; it must exit 0."""
        command = self.command(marker) + extra
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        self.ran.append(label)
        return done

    def follow(self, label: str, marker: str, lines: int, timeout_s: float = 30.0) -> tuple[list[str], bool]:
        """Run a README command that follows (never exits) on a terminal, as a reader would (kcat buffers its output
        on a pipe): its first ``lines`` lines, and whether it was still running then; it is killed after."""
        command = self.command(marker)
        master, slave = pty.openpty()
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=self.env,
        )
        os.close(slave)
        shown = b""
        deadline = time.monotonic() + timeout_s
        try:
            while shown.count(b"\n") < lines and time.monotonic() < deadline:
                if select.select([master], [], [], 0.5)[0]:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: the command exited, the terminal is closed
                        break
                    if not chunk:
                        break
                    shown += chunk
            running = process.poll() is None
        finally:
            process.kill()
            process.wait()
            os.close(master)
        self.ran.append(label)
        return shown.decode().replace("\r\n", "\n").splitlines(), running


def kcat_lines(stdout: str) -> dict[str, dict[str, Any]]:
    """``%k => %s`` lines: key -> its newest decision."""
    found: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" => ")
        found[key] = orjson.loads(value)
    return found


def run_readme_sender_examples(deployment: GuardDeployment) -> None:
    deployment.create_topics()
    deployment.start_worker("w1")
    topics = deployment.topics
    prefix = deployment.redis_prefix
    readme = ReadmeShell(deployment)
    verified: list[str] = []

    # NOW=$(date -u ...): the README's events' time, one value for all of them
    now_iso = readme.run("NOW=$(date)", "NOW=", '; printf %s "$NOW"').stdout
    now_ms = int(datetime.fromisoformat(now_iso.replace("Z", "+00:00")).timestamp() * 1000)
    readme.env["NOW"] = now_iso

    # .venv/bin/fatigue send '{contact call cust-42}', plus cust-43's unsubscribe for the e-mail examples below
    unsubscribe = {"type": "unsubscribe", "event_id": "d2", "customer_id": "cust-43", "ts": now_ms, "channel": "email"}
    sent = readme.run("fatigue send", "fatigue send ", " " + shlex.quote(orjson.dumps(unsubscribe).decode()))
    assert "sent 2 event(s)" in sent.stderr, sent.stderr
    # echo '{sms_stop cust-42}' | kcat -X partitioner=murmur2_random -P ... -k cust-42  (as Java clients)
    readme.run("kcat -P (murmur2_random)", "-X partitioner=murmur2_random -P ")
    # `--raw` sends events unchecked, e.g. to see the dead-letter path: a contact without its channel
    malformed = f'{{"type":"contact","event_id":"demo-3","customer_id":"cust-42","ts":"{now_iso}"}}'
    subprocess.run(
        ["fatigue", "send", "--raw", malformed], capture_output=True, text=True, check=True, cwd=REPO, env=readme.env
    )
    readme.ran.append("fatigue send --raw")
    deployment.wait_until_settled(stable_s=5)

    # kcat's murmur2_random put the sms_stop on cust-42's partition (librdkafka's default, crc32, would not: the
    # worker would forward a copy there, a second record): the worker read it where it keeps cust-42's state
    inputs = subprocess.run(
        ["kcat", "-b", deployment.bootstrap, "-C", "-t", topics["events"], "-e", "-q", "-f", "%p %k %s\n"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    expected_partition = partition_for_key(b"cust-42", deployment.partitions)
    assert [line.split(" ", 2)[:2] for line in inputs if '"demo-2"' in line] == [
        [str(expected_partition), "cust-42"]
    ], inputs
    verified.append(f"kcat -P on cust-42's murmur2 partition {expected_partition}/{deployment.partitions}")

    # .venv/bin/fatigue check cust-42: call blocked (call <= 1 per 1d), and the sms opt-out
    report = orjson.loads(readme.run("fatigue check", "fatigue check cust-42").stdout)
    call = report["channels"]["call"]
    assert call["status"] == "blocked", report
    call_block = call["decision"]
    assert (call_block["reason"], call_block["rule"], call_block["rule_id"], call_block["cause_event_id"]) == (
        "cap",
        "call <= 1 per 1d",
        "cap.call.1d",
        "demo-1",
    ), call_block
    until_ms = now_ms + DAY_MS
    assert call_block["until_ms"] == until_ms, (call_block, now_iso)
    sms = report["channels"]["sms"]
    assert sms["status"] == "blocked" and sms["decision"]["reason"] == "sms_stop", report
    assert report["channels"]["email"] == {"status": "allowed"}, report
    verified.append("check: call cap.call.1d until NOW+1d, sms sms_stop")

    # kcat -X isolation.level=read_committed -C -t fatigue.blocks.v1 -e: what dialers read
    decisions = kcat_lines(readme.run("kcat -C blocks", "-C -t fatigue.blocks.v1 -e").stdout)
    assert set(decisions) == {"call:cust-42", "sms:cust-42", "email:cust-43"}, decisions
    assert decisions["call:cust-42"] == call_block, (decisions, call_block)
    sms_block = decisions["sms:cust-42"]
    assert (sms_block["reason"], sms_block["rule_id"], sms_block["until"], sms_block["cause_event_id"]) == (
        "sms_stop",
        "opt_out.sms_stop",
        None,
        "demo-2",
    ), sms_block
    assert decisions["email:cust-43"]["reason"] == "unsubscribe", decisions
    verified.append("blocks topic (read_committed): 3 decisions")

    # redis-cli GET '...block:sms': email platforms' view of the sms block, the topic's decision
    assert orjson.loads(readme.run("redis-cli GET sms", "GET 'fatigue:{c:cust-42}:block:sms'").stdout) == sms_block
    # redis-cli PTTL '...block:call': expires exactly at `until` (Redis and this test share the machine's clock)
    before = time.time() * 1000
    pttl = int(readme.run("redis-cli PTTL call", "PTTL 'fatigue:{c:cust-42}:block:call'").stdout)
    after = time.time() * 1000
    assert until_ms - after - 2 <= pttl <= until_ms - before + 2, (pttl, until_ms - after, until_ms - before)
    verified.append(f"redis GET sms == topic, PTTL call {pttl} ms == until - now")

    # kcat -C -t fatigue.dlq.v1 -f '%h => %s\n': the malformed event, as sent, with the worker's reason
    rejects = readme.run("kcat -C dlq", "-C -t fatigue.dlq.v1 -e").stdout.splitlines()
    assert len(rejects) == 1 and rejects[0].endswith(f" => {malformed}"), rejects
    headers = dict(re.findall(r"(fatigue-[a-z-]+)=(.*?)(?=,fatigue-[a-z-]+=| => )", rejects[0]))
    assert headers["fatigue-event-id"] == "demo-3" and headers["fatigue-source-topic"] == topics["events"], headers
    assert headers["fatigue-source-partition"] == str(expected_partition), headers
    verified.append(f"dlq: demo-3 rejected ({headers['fatigue-reason']})")

    # curl -s localhost:6066/metrics | grep ^fatigue_  (the worker's own web port)
    metrics = readme.run("curl /metrics", "/metrics").stdout.splitlines()
    totals: dict[str, float] = {}
    for line in metrics:
        name, value = re.split(r"[{ ]", line, maxsplit=1)[0], float(line.rsplit(" ", 1)[1])
        totals[name] = totals.get(name, 0.0) + value
    assert (totals["fatigue_rejected_total"], totals.get("fatigue_rerouted_total", 0.0)) == (1, 0), metrics
    assert totals["fatigue_decisions_total"] == 3, [line for line in metrics if "decisions_total" in line]
    verified.append(f"metrics: {len(metrics)} fatigue_ lines, 1 rejected, 0 rerouted, 3 decisions")
    # For dialers: the shipped client (docs/examples/dialer.py)
    dialer = subprocess.run(
        [sys.executable, "docs/examples/dialer.py", deployment.bootstrap, topics["decisions"], "cust-42"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert dialer.stdout.split() == ["do", "not", "call", "cap", call_block["until"]], dialer.stdout + dialer.stderr
    # `fatigue follow --channel call`, stopping after the current blocks (--no-live)
    followed = [
        orjson.loads(line)
        for line in readme.run("fatigue follow --no-live", "fatigue follow", " --no-live").stdout.splitlines()
    ]
    assert followed == [call_block], followed
    # `kcat ... -X isolation.level=read_committed -C -t fatigue.blocks.v1 -f '%k => %s\n'` follows: the blocks so
    # far, then it waits for live ones (stopped here once it has shown them)
    shown, running = readme.follow("kcat -C (follow)", "-C -t fatigue.blocks.v1 -f", lines=3)
    assert running and kcat_lines("\n".join(shown)) == decisions, (running, shown)
    verified.append("follow --no-live: 1 call block; kcat follow: 3 blocks, still following")

    # For email platforms: the shipped client (docs/examples/email_precheck.py), redis-cli, fatigue filter
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
    readme.ran += ["dialer.py", "email_precheck.py", "redis-cli GET email", "fatigue filter"]
    verified.append("dialer.py: do not call cap; email_precheck.py and fatigue filter: cust-43 unsubscribed")
    print(f"README sender examples ran ({', '.join(readme.ran)}) and verified: {'; '.join(verified)}")
