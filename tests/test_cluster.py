"""A small cluster on one machine: network namespaces as hosts, a bridge as their network.

    redis host   10.231.0.1   redis-server (password) and an S3 API (moto's server)
    gpu1, gpu2   10.231.0.2-3 `zimg inference-server` (sim, token) and `zimg worker --processes 2`, S3 storage
    web host     10.231.0.4   `zimg web` (token), S3 storage, its own empty image folder
    client       10.231.0.5   the test's HTTP client (a small driver process the test talks to over a pipe)

Every host is a network namespace with its own hostname (``unshare --uts``), joined by veth
pairs to a bridge that lives in one more namespace, so no traffic touches this machine's own
network. The test shows jobs spread over both GPU hosts, every image served by the web host
(from the bucket: it has none of the files), and then kills one GPU host whole: its link is cut
and every process in it SIGKILLed, then its namespace deleted. Its running jobs finish on the
other GPU host once their leases run out, and no job is lost.

Shipped defaults throughout (lease, retries, worker and web settings). Only the simulator is
given a latency: the ``h200-512`` estimate (0.11 s + 0.16 s per image) on gpu2, and 2.5 s an
image on gpu1, so that both its workers are inside a job when it dies. Each namespace is private
to the test, so the servers use their usual ports inside them.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from zimg_queue.redis_server import find_redis_server
from zimg_queue.settings import Settings

NET = "10.231.0"
HOSTS = {"redis": 1, "gpu1": 2, "gpu2": 3, "web": 4, "client": 5}
REDIS_PASSWORD = "cluster-redis-password"
INFERENCE_TOKEN = "cluster-inference-token"
API_TOKEN = "cluster-api-token"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
REDIS_URL = f"redis://:{REDIS_PASSWORD}@{NET}.1:6379/0"
S3_ENDPOINT = f"http://{NET}.1:5000"
WEB = f"http://{NET}.4:8000"
JOBS = 40
#: gpu1 dies once it has finished this many jobs and both its workers run another: the spread is visible first.
FINISHED_BEFORE_KILL = 2
#: The h200-512 simulator estimate (workers/inference/backends/sim_profiles.py): t(B) = 0.11 + 0.16 B seconds.
SIM_LATENCY = {"ZIMG_SIM_LATENCY_A": "0.11", "ZIMG_SIM_LATENCY_B": "0.16"}
#: gpu1 simulates a slower GPU (2.5 s an image), so that when it dies both its workers are inside a job, which is
#: what this test is about. A host dying in the milliseconds between a worker's dequeue and the job's start is
#: tests/test_claims.py's (the dequeue claims the job, and an expired claim puts it back at the front of its queue).
VICTIM_LATENCY = {"ZIMG_SIM_LATENCY_A": "2.5", "ZIMG_SIM_LATENCY_B": "0"}


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "unshare", "hostname"):
        if not shutil.which(tool):
            return f"needs `{tool}`"
    probe = f"zcprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


SKIP_REASON = _why_no_namespaces()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Cluster:
    """The namespaces, their links and every process started in them; :meth:`down` removes it all."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.tag = f"zc{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.ns = {host: f"{self.tag}-{host}" for host in HOSTS}
        self.procs: dict[str, list[subprocess.Popen]] = {host: [] for host in HOSTS}
        self.dead: set[str] = set()

    def link(self, host: str) -> str:
        return f"{self.tag}s{HOSTS[host]}"  # the switch end of the host's veth pair (names <= 15 chars)

    def up(self) -> Cluster:
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host, n in HOSTS.items():
            ns, inside = self.ns[host], f"{self.tag}h{n}"
            ip("netns", "add", ns)
            ip("link", "add", inside, "type", "veth", "peer", "name", self.link(host))
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", self.link(host), "netns", self.switch)
            ip("-n", self.switch, "link", "set", self.link(host), "master", "br0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", inside, "name", "eth0")
            ip("-n", ns, "addr", "add", f"{NET}.{n}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMG_", "AWS_")) and "proxy" not in k.lower()}
        return {**env, "PYTHONUNBUFFERED": "1", **extra}

    def start(self, host: str, name: str, args: list[str], **env: str) -> subprocess.Popen:
        """Run ``args`` in ``host``'s namespace under its own hostname; output to ``logs/<host>-<name>.log``."""
        log = (self.tmp / "logs" / f"{host}-{name}.log").open("ab")
        wrapper = ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"']
        proc = subprocess.Popen([*wrapper, host, *args], env=self.env(**env), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.procs[host].append(proc)
        return proc

    def zimg(self, host: str, name: str, *args: str, **env: str) -> subprocess.Popen:
        return self.start(host, name, [sys.executable, "-m", "zimg_queue.cli", *args], **env)

    def kill_host(self, host: str) -> None:
        """The host is gone: its link cut (nothing it sent after reaches anyone), every process SIGKILLed."""
        ip("-n", self.switch, "link", "del", self.link(host))
        self._kill_all(host)
        ip("netns", "del", self.ns[host], check=False)
        self.dead.add(host)

    def _kill_all(self, host: str) -> None:
        for _ in range(3):  # a process may fork while we kill: look again
            pids = ip("netns", "pids", self.ns[host], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                break
            time.sleep(0.05)
        for proc in self.procs[host]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def down(self) -> None:
        for host in HOSTS:
            if host not in self.dead:
                self._kill_all(host)
                ip("netns", "del", self.ns[host], check=False)
        ip("netns", "del", self.switch, check=False)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.tmp / "logs").glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)


DRIVER = textwrap.dedent(
    """
    import base64, hashlib, json, sys, time
    import redis, requests
    API = {"Authorization": "Bearer %(token)s"}
    http, db = requests.Session(), redis.Redis.from_url("%(redis)s", socket_timeout=5)

    def call(method, url, follow=True, **kw):
        r = http.request(method, url, timeout=10, allow_redirects=follow, **kw)
        return {"status": r.status_code, "headers": dict(r.headers), "body": base64.b64encode(r.content).decode(),
                "sha256": hashlib.sha256(r.content).hexdigest(), "history": [h.status_code for h in r.history]}

    def snapshot(ids):
        # Each job's status and the hostname of the worker that runs (or ran) it.
        out = {}
        for jid in ids:
            status, worker = db.hmget("rq:job:" + jid, "status", "worker_name")
            status = status.decode() if status else None
            host = None
            if status in ("started", "finished") and worker:
                host = db.hget(b"rq:worker:" + worker, "hostname")
                host = host.decode() if host else None
            out[jid] = {"status": status, "host": host}
        return out

    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["fn"] == "call":
                answer = call(*cmd["args"], **cmd.get("kwargs", {}))
            elif cmd["fn"] == "api":  # a JSON call to the web API with its token
                r = http.request(cmd["args"][0], "%(web)s" + cmd["args"][1], headers=API, timeout=10,
                                 json=cmd.get("json"), allow_redirects=False)
                answer = {"status": r.status_code, "json": r.json() if "json" in r.headers.get("content-type", "")
                          else None, "headers": dict(r.headers)}
            elif cmd["fn"] == "image":  # the image route with its token, then the redirect without it
                first = http.get("%(web)s" + cmd["args"][0], headers=API, timeout=10, allow_redirects=False)
                answer = {"status": first.status_code, "location": first.headers.get("Location")}
                if first.is_redirect:
                    answer["final"] = call("GET", first.headers["Location"])
                    answer["final"].pop("body")
            elif cmd["fn"] == "snapshot":
                answer = snapshot(cmd["args"][0])
            elif cmd["fn"] == "ping":
                answer = db.ping()
            elif cmd["fn"] == "bucket":
                import boto3
                boto3.client("s3", endpoint_url="%(s3)s", region_name="us-east-1").create_bucket(Bucket=cmd["args"][0])
                answer = True
            else:
                answer = {"error": "unknown fn"}
        except Exception as exc:
            answer = {"error": type(exc).__name__ + ": " + str(exc)[:300]}
        print(json.dumps(answer), flush=True)
    """
)


class Client:
    """The test's hands inside the client namespace: a driver process fed one JSON command per line."""

    def __init__(self, cluster: Cluster):
        script = DRIVER % {"token": API_TOKEN, "redis": REDIS_URL, "web": WEB, "s3": S3_ENDPOINT}
        wrapper = ["ip", "netns", "exec", cluster.ns["client"], sys.executable, "-u", "-c", script]
        self.proc = subprocess.Popen(wrapper, env=cluster.env(**AWS), cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=(cluster.tmp / "logs" / "client.log").open("ab"),
                                     text=True)  # fmt: skip
        cluster.procs["client"].append(self.proc)

    def __call__(self, fn: str, *args: Any, timeout: float = 30, **kw: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"fn": fn, "args": list(args), **kw}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the client driver did not answer {fn} within {timeout} s")
        return json.loads(self.proc.stdout.readline())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if SKIP_REASON:
        pytest.skip(f"network-namespace cluster: {SKIP_REASON}")
    (tmp_path / "logs").mkdir()
    made = Cluster(tmp_path)
    try:
        yield made.up()
    finally:
        made.down()


def poll(check, timeout: float, what: str, cluster: Cluster, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s\n{cluster.logs()}")


def test_two_gpu_hosts_share_the_queue_and_survive_losing_one(cluster: Cluster, tmp_path: Path):
    defaults = Settings.from_env({})
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_args = ["--bind", f"{NET}.1", "--port", "6379", "--requirepass", REDIS_PASSWORD, "--dir", str(redis_dir)]
    cluster.start("redis", "redis", [find_redis_server(), *redis_args, "--save", "", "--appendonly", "yes"])
    cluster.start("redis", "s3", [sys.executable, "-m", "moto.server", "-H", f"{NET}.1", "-p", "5000"])  # moto_server
    client = Client(cluster)
    poll(lambda: client("ping") is True, 30, "redis answers", cluster)
    poll(lambda: client("bucket", "posters") is True, 60, "the S3 API answers", cluster)

    s3 = {"ZIMG_STORAGE": "s3", "ZIMG_S3_ENDPOINT_URL": S3_ENDPOINT, "ZIMG_S3_BUCKET": "posters",
          "ZIMG_S3_ADDRESSING_STYLE": "path", **AWS}  # fmt: skip
    inference = {h: f"http://{NET}.{HOSTS[h]}:7860" for h in ("gpu1", "gpu2")}
    for host, other in (("gpu1", "gpu2"), ("gpu2", "gpu1")):
        common = {"ZIMG_INFERENCE_TOKEN": INFERENCE_TOKEN, "ZIMG_DATA_DIR": str(tmp_path / host)}
        latency = VICTIM_LATENCY if host == "gpu1" else SIM_LATENCY
        cluster.zimg(host, "inference", "inference-server", "--host", f"{NET}.{HOSTS[host]}", **common, **latency)
        cluster.zimg(host, "worker", "worker", "--processes", "2", ZIMG_REDIS_URL=REDIS_URL, **common, **s3,
                     ZIMG_INFERENCE_URL=f"{inference[host]},{inference[other]}")  # fmt: skip
    cluster.zimg("web", "web", "web", "--host", f"{NET}.4", "--processes", "1", "--threads", "8",
                 ZIMG_REDIS_URL=REDIS_URL, ZIMG_API_TOKEN=API_TOKEN, ZIMG_DATA_DIR=str(tmp_path / "web"),
                 ZIMG_INFERENCE_URL=",".join(inference.values()), **s3)  # fmt: skip

    def healthy() -> bool:
        answer = client("call", "GET", f"{WEB}/healthz")
        return answer.get("status") == 200 and json.loads(base64.b64decode(answer["body"]))["workers"]["count"] >= 4

    poll(healthy, 90, "the web host sees Redis, the inference servers and 4 workers", cluster)

    ids = []
    for i in range(JOBS):
        body = {"prompt": f"a lighthouse at dusk, no. {i}", "width": 64, "height": 64, "seed": i}
        answer = client("api", "POST", "/v1/jobs", json=body)
        assert answer["status"] == 202, answer
        ids.append(answer["json"]["id"])

    # Both GPU hosts take jobs; once gpu1 has finished a few and is running others, it dies whole.
    before_kill: dict[str, int] = {}

    def gpu1_busy() -> list[str]:
        snap = client("snapshot", ids).values()
        for host in ("gpu1", "gpu2"):
            before_kill[host] = sum(1 for s in snap if s["host"] == host and s["status"] == "finished")
        running = [j for j, s in zip(ids, snap, strict=True) if s["host"] == "gpu1" and s["status"] == "started"]
        return running if before_kill["gpu1"] >= FINISHED_BEFORE_KILL and len(running) >= 2 else []

    running_on_victim = poll(gpu1_busy, 60, "gpu1 finishes jobs and runs more", cluster, interval=0.05)
    killed_at = time.monotonic()
    cluster.kill_host("gpu1")

    finished_at: dict[str, float] = {}

    def all_final() -> bool:
        for jid, s in client("snapshot", ids).items():
            if s["status"] in ("finished", "failed", "canceled", "stopped") and jid not in finished_at:
                finished_at[jid] = time.monotonic()
        return len(finished_at) == len(ids)

    poll(all_final, 120, "every job ends after gpu1 died", cluster)
    recovery_s = max(finished_at[j] for j in running_on_victim) - killed_at
    all_done_s = max(finished_at.values()) - killed_at

    statuses = {j: client("api", "GET", f"/v1/jobs/{j}")["json"] for j in ids}
    assert [s["status"] for s in statuses.values()] == ["finished"] * JOBS, {j: s["error"] for j, s in statuses.items()}
    per_host = {h: sum(1 for s in statuses.values() if Path(s["result"]["path"]).is_relative_to(tmp_path / h))
                for h in ("gpu1", "gpu2")}  # fmt: skip
    assert per_host["gpu1"] >= 1 and per_host["gpu2"] >= 1 and sum(per_host.values()) == JOBS, per_host
    for j in running_on_victim:  # gpu1's running jobs finished on gpu2, their lost attempt recorded
        assert Path(statuses[j]["result"]["path"]).is_relative_to(tmp_path / "gpu2"), statuses[j]
        assert any("WorkerDied" in a["error"] for a in statuses[j]["attempts"]), statuses[j]["attempts"]
    lease_bound = defaults.lease_ttl + 5 + 10  # lease + one sweep (5 s) + the re-run on a loaded 2-core machine
    assert recovery_s <= lease_bound, f"gpu1's jobs finished {recovery_s:.1f} s after it died\n{cluster.logs()}"

    # Every image through the web host, which has none of the files: a redirect to the bucket.
    for status in statuses.values():
        answer = client("image", status["result"]["image_url"])
        assert answer["status"] == 302 and answer["location"].startswith(S3_ENDPOINT), answer
        assert answer["final"]["status"] == 200 and answer["final"]["sha256"] == status["result"]["sha256"], answer
    assert not (tmp_path / "web" / "images").exists() or not any((tmp_path / "web" / "images").iterdir())

    assert before_kill["gpu2"] >= 1, before_kill  # both hosts served the queue while both were up
    figures = {"jobs": JOBS, "finished_before_kill": before_kill, "jobs_per_host": per_host,
               "victim_running_jobs": len(running_on_victim), "victim_jobs_finished_after_kill_s": round(recovery_s, 1),
               "all_finished_after_kill_s": round(all_done_s, 1), "lease_ttl_s": defaults.lease_ttl}  # fmt: skip
    print(f"\ncluster figures: {json.dumps(figures)}")
    (tmp_path / "figures.json").write_text(json.dumps(figures))
