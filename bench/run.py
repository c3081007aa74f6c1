#!/usr/bin/env python3
"""The capgo-server benchmark (run it with scripts/bench; see BENCHMARKS.md).

Builds in release mode, starts capgo-server on loopback, seeds a catalog of 50 apps x 2
platforms x 20 native releases with 3 channels each, and drives it with wrk:

  ceiling         the same wrk load against bench/ceiling.rs, a minimal hyper server that
                  answers every request with a real /updates answer (same bytes)
  updates-hit     POST /updates, one plugin-shaped body, answers from the cache
  updates-100k    POST /updates from 100,000 distinct devices spread over all 2,000 releases
                  and the 3 channels, with CACHE_RESULT_DURATION=0s: every check reads the store
  latency-half    updates-hit at half of its measured peak rate (each connection waits 10 ms
                  after each answer, with as many connections as that rate needs)
  ceiling-latency-half  the same paced load on the ceiling server: the latency the machine
                  adds (wrk and the server share its cores) whatever the server does
  stats           POST /stats with batches of 200 events; every stored event is counted back
                  (embedded store: rows of its stats table)
  upload          one 500 MiB bundle through bundles.upload, against `cp` of the same file on
                  the same disk, with the server's peak RSS
  updates-devices the 100,000 devices of updates-100k with the answer cache on (the default)
  updates-rollout the same while every release's production channel is in a staged rollout at
                  50% (half the devices get the canary): no lower a ratio to the ceiling than
                  updates-devices
  soak-baseline   60 s of updates-devices' load at 80% of its peak rate, before any rollout,
                  with stats flowing beside it: p99 and the server's RSS per 10 s window
  soak            the same 60 s during the rollouts (updates-rollout's load) at the baseline
                  soak's rate, with stats from canary devices beside it
  delta           bytes a device downloads for an update that changed one line of a real Vite
                  React app, against the zip (bench/delta.py)

Every throughput figure is the median of --runs runs, ceiling and server runs interleaved; a
scenario's peak RSS is the server's highest RSS during its load (the kernel's peak is started
over before it, so seeding the catalog does not count; the RSS before the load is kept too). The
same scenarios run on MongoDB + S3 with --backends external (scripts/services start first).
Results: a table on stdout and JSON in target/bench/results.json.
"""

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
import zipfile

import delta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "bench-management-key-0123456789"
APPS, PLATFORMS, RELEASES = 50, ("android", "ios"), 20
CHANNELS = ("production", "beta", "staging")
DEVICES = 100_000
THREADS, CONNECTIONS = 2, 64


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def build():
    log("building (release)...")
    subprocess.run(
        ["cargo", "build", "--release", "--bin", "capgo-server", "--example", "ceiling"],
        cwd=ROOT, check=True)
    release = os.path.join(target_dir(), "release")
    return os.path.join(release, "capgo-server"), os.path.join(release, "examples", "ceiling")


def reset_peak_rss(pid):
    """Starts the process's peak RSS (VmHWM) over from its current RSS (Linux 4.0+), so a peak
    read after a load is the load's, not that of the seeding before it."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def status_mib(pid, field):
    """A size field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon...) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid):
    return status_mib(pid, "VmHWM")


def current_rss_mib(pid):
    return status_mib(pid, "VmRSS")


def ceiling_beside(binary):
    """The ceiling server built beside a capgo-server binary (`<dir>/examples/ceiling`, as
    `build()` makes it)."""
    return os.path.join(os.path.dirname(binary), "examples", "ceiling")


class Server:
    """capgo-server on two free loopback ports."""

    def __init__(self, binary, data_dir, env):
        os.makedirs(data_dir, exist_ok=True)
        self.device_port, self.management_port = free_port(), free_port()
        full_env = {
            "PATH": os.environ["PATH"],
            "DATA_DIR": data_dir,
            "LISTEN_ADDRESS": "127.0.0.1",
            "CAPGO_USER_PORT": str(self.device_port),
            "CAPGO_MANAGEMENT_PORT": str(self.management_port),
            "MANAGEMENT_API_TOKENS": KEY,
            # One load generator on one address: the per-address protections a public server
            # needs (requests, stats events and connections per IP) would measure themselves.
            "LIMIT_REQUEST_PER_MINUTE": "0",
            "STATS_EVENTS_PER_MINUTE": "0",
            "MAX_CONNECTIONS_PER_IP": "0",
            **env,
        }
        self.process = subprocess.Popen([binary], env=full_env, cwd=data_dir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"capgo-server exited: {self.process.stderr.read().decode()}")
            try:
                if self.request("GET", "/_healthz", management=True)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("capgo-server did not start")

    def connection(self, management):
        port = self.management_port if management else self.device_port
        return http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def request(self, method, path, body=None, headers=None, management=False, connection=None):
        own = connection is None
        connection = connection or self.connection(management)
        headers = dict(headers or {})
        if management:
            headers["x-api-key"] = KEY
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if own:
            connection.close()
        return response.status, data

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def multipart(fields, file_path=None, file_bytes=None):
    boundary = uuid.uuid4().hex
    head = b""
    for name, value in fields.items():
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                 f"{value}\r\n").encode()
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; "
             f"filename=\"bundle.zip\"\r\nContent-Type: application/zip\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return boundary, head, tail


def small_zip(marker):
    path = tempfile.mktemp(suffix=".zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("index.html", f"<html>{marker}</html>")
        archive.writestr("assets/app.js", "console.log(%r)" % marker)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def upload(server, app_id, version, data, connection=None):
    boundary, head, tail = multipart({"app_id": app_id, "version_name": version})
    status, body = server.request(
        "POST", "/api/v1/bundles.upload", head + data + tail,
        {"content-type": f"multipart/form-data; boundary={boundary}"},
        management=True, connection=connection)
    assert status == 200, body
    return json.loads(body)["bundle"]["id"]


def app_id(app):
    return f"com.bench.app{app}"


def seed(server):
    """50 apps x 2 platforms x 20 releases; channels production 1.2.0, beta 1.1.0, staging 1.2.0."""
    started = time.time()
    connection = server.connection(True)
    bundles = {}
    for app in range(APPS):
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            bundles[(app, version)] = upload(server, app_id(app), version,
                                             small_zip(f"{app}-{version}"), connection)
    for app in range(APPS):
        for platform in PLATFORMS:
            for release in range(RELEASES):
                status, body = server.request("POST", "/api/v1/releases.create", {
                    "platform": platform, "app_id": app_id(app),
                    "version_name": f"1.{release}.0", "version_code": str(release + 1),
                    "builtin_bundle_id": bundles[(app, "1.0.0")],
                }, management=True, connection=connection)
                assert status == 200, body
                release_id = json.loads(body)["release"]["id"]
                for channel, version in zip(CHANNELS, ("1.2.0", "1.1.0", "1.2.0")):
                    status, body = server.request("POST", "/api/v1/releases.set-active", {
                        "release_id": release_id, "bundle_id": bundles[(app, version)],
                        "channel": channel,
                    }, management=True, connection=connection)
                    assert status == 200, body
    connection.close()
    log(f"seeded {APPS * len(PLATFORMS) * RELEASES} releases in {time.time() - started:.1f}s")
    return bundles


def seed_one_app(server):
    """The small catalog of the per-check probes (bench/instructions.py, bench/cpu_per_check.py):
    one app whose android 1.0.0 release serves 1.1.0 (two files) on its production channel."""
    connection = server.connection(True)
    builtin = upload(server, app_id(0), "1.0.0", small_zip("a"), connection)
    served = upload(server, app_id(0), "1.1.0", small_zip("b"), connection)
    status, body = server.request("POST", "/api/v1/releases.create", {
        "platform": "android", "app_id": app_id(0), "version_name": "1.0.0",
        "version_code": "1", "builtin_bundle_id": builtin}, management=True)
    assert status == 200, body
    release = json.loads(body)["release"]["id"]
    status, body = server.request("POST", "/api/v1/releases.set-active", {
        "release_id": release, "bundle_id": served}, management=True)
    assert status == 200, body


def device_body(app=0, platform="android", release=0, device=0, channel=""):
    return {
        "platform": platform, "device_id": f"00000000-0000-4000-8000-{device:012d}",
        "app_id": app_id(app), "version_name": "builtin", "version_build": f"1.{release}.0",
        "version_code": str(release + 1), "version_os": "14", "plugin_version": "8.51.14",
        "is_emulator": False, "is_prod": True, "custom_id": "", "defaultChannel": channel,
    }


LUA_DONE = r"""
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,'
    .. '"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), errors, summary.errors.status))
end
"""


def lua_fixed(path, body, interval_ms=None):
    delay = f"delay = function() return {interval_ms} end\n" if interval_ms else ""
    return (f"wrk.method = 'POST'\nwrk.path = {json.dumps(path)}\n"
            f"wrk.headers['Content-Type'] = 'application/json'\n"
            f"wrk.body = {json.dumps(json.dumps(body))}\n{delay}{LUA_DONE}")


def lua_devices():
    """100,000 devices spread over every app, platform, release and channel."""
    return r"""
local counter = 0
local offset = 0
local threads = 0
setup = function(thread)
  thread:set("offset", threads * 50000)
  threads = threads + 1
end
request = function()
  counter = counter + 1
  local i = (offset + counter) % %DEVICES%
  local app = i % %APPS%
  local platform = (math.floor(i / %APPS%) % 2 == 0) and "android" or "ios"
  local release = math.floor(i / (%APPS% * 2)) % %RELEASES%
  local channels = {"", "beta", "staging"}
  local channel = channels[(math.floor(i / (%APPS% * 2 * %RELEASES%)) % 3) + 1]
  local body = string.format(
    '{"platform":"%s","device_id":"00000000-0000-4000-8000-%012d","app_id":"com.bench.app%d",'
    .. '"version_name":"builtin","version_build":"1.%d.0","version_code":"%d","version_os":"14",'
    .. '"plugin_version":"8.51.14","is_emulator":false,"is_prod":true,"custom_id":"",'
    .. '"defaultChannel":"%s"}', platform, i, app, release, release + 1, channel)
  return wrk.format("POST", "/updates", {["Content-Type"] = "application/json"}, body)
end
""".replace("%DEVICES%", str(DEVICES)).replace("%APPS%", str(APPS)).replace(
        "%RELEASES%", str(RELEASES)) + LUA_DONE


def wrk(port, script_text, seconds, connections=CONNECTIONS):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(script_text)
    try:
        output = subprocess.run(
            ["wrk", "-t", str(THREADS), "-c", str(connections), "-d", f"{seconds}s",
             "--timeout", "10s", "-s", script.name, f"http://127.0.0.1:{port}"],
            check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(script.name)
    line = next(l for l in output.splitlines() if l.startswith("BENCH "))
    result = json.loads(line[len("BENCH "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def median_of(results, key):
    return statistics.median(r[key] for r in results)


def summarize(results):
    return {
        "rps": median_of(results, "rps"),
        "p50_ms": median_of(results, "p50_us") / 1000,
        "p99_ms": median_of(results, "p99_us") / 1000,
        "p999_ms": median_of(results, "p999_us") / 1000,
        "errors": sum(r["errors"] + r["non2xx"] for r in results),
        "runs": len(results),
    }


def backend_env(backend):
    if backend == "embedded":
        return {}
    env_file = os.path.join(ROOT, "target", "test-services", "env")
    if not os.path.exists(env_file):
        raise SystemExit("--backends external needs `scripts/services start` first")
    values = {}
    for line in open(env_file):
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value.strip("'\"")
    env = {
        "MONGO_CONNECTION_STRING": values["CAPGO_TEST_MONGO_URL"],
        "MONGO_DATABASE": f"capgo_bench_{uuid.uuid4().hex[:12]}",
        "S3_BUCKET": values["CAPGO_TEST_S3_BUCKET"],
        "S3_BASE_ENDPOINT": values["CAPGO_TEST_S3_ENDPOINT"],
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        env[name] = values[name]
    return env


@contextlib.contextmanager
def ceiling_server(ceiling_binary, answer_file):
    """The ceiling server answering `answer_file` to every request; yields its port."""
    port = free_port()
    ceiling = subprocess.Popen([ceiling_binary, str(port), answer_file], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        yield port
    finally:
        ceiling.terminate()
        ceiling.wait()


def against_ceiling(ceiling_binary, answer_file, server, script, name, ceiling_name, args,
                    report, connections=CONNECTIONS):
    """The same wrk load on the ceiling server and on capgo-server, runs interleaved."""
    ceiling_runs, server_runs = [], []
    rss_before = current_rss_mib(server.process.pid)
    reset_peak_rss(server.process.pid)
    with ceiling_server(ceiling_binary, answer_file) as port:
        for run in range(args.runs):
            ceiling_runs.append(wrk(port, script, args.seconds, connections))
            server_runs.append(wrk(server.device_port, script, args.seconds, connections))
            log(f"  run {run + 1}: {ceiling_name} {ceiling_runs[-1]['rps']:.0f}/s, "
                f"{name} {server_runs[-1]['rps']:.0f}/s")
    report[ceiling_name] = summarize(ceiling_runs)
    report[name] = summarize(server_runs)
    report[name]["peak_rss_mib"] = peak_rss_mib(server.process.pid)
    report[name]["rss_before_mib"] = rss_before


def stored_events(backend, data_dir):
    """Rows in the embedded store's stats table (`bundles.activity` counts distinct devices, not
    events); `None` for the external store."""
    if backend != "embedded":
        return None
    with sqlite3.connect(os.path.join(data_dir, "capgo.db")) as db:
        return db.execute("SELECT COUNT(*) FROM stats_events").fetchone()[0]


def throughput(binary, ceiling_binary, backend, data_dir, args, report):
    env = backend_env(backend)
    server = Server(binary, data_dir, env)
    bundles = seed(server)
    hit_body = device_body()
    status, answer = server.request("POST", "/updates", hit_body)
    assert status == 200 and b'"url"' in answer, answer
    answer_file = os.path.join(data_dir, "answer.json")
    with open(answer_file, "wb") as f:
        f.write(answer)
    hit_script = lua_fixed("/updates", hit_body)
    against_ceiling(ceiling_binary, answer_file, server, hit_script, "updates-hit", "ceiling",
                    args, report)

    # Half the peak rate: each connection waits 10 ms after each answer (wrk's delay()), with
    # as many connections as that rate needs; the rate reached is reported beside the target.
    # The ceiling server gets the same paced load, so its latency shows what the machine
    # (wrk and the server sharing its cores) adds whatever the server does.
    half_rate = report["updates-hit"]["rps"] / 2
    interval_ms = 10
    connections = max(16, round(half_rate * interval_ms / 1000))
    against_ceiling(ceiling_binary, answer_file, server,
                    lua_fixed("/updates", hit_body, interval_ms), "latency-half",
                    "ceiling-latency-half", args, report, connections)
    for name in ("latency-half", "ceiling-latency-half"):
        report[name]["target_rps"] = half_rate

    # Stats ingestion: batches of 200, then every stored event counted back.
    batch = [{"app_id": app_id(0), "device_id": f"device-{i}", "action": "set",
              "version_name": "1.2.0", "version_build": "1.0.0", "platform": "android"}
             for i in range(200)]
    stats_runs = [wrk(server.device_port, lua_fixed("/stats", batch), args.seconds, 16)
                  for _ in range(args.runs)]
    time.sleep(1)
    sent = sum((r["requests"] - r["non2xx"]) * 200 for r in stats_runs)
    server.stop()
    report["stats"] = summarize(stats_runs)
    report["stats"]["events_per_s"] = report["stats"]["rps"] * 200
    report["stats"]["events_acknowledged"] = sent
    report["stats"]["events_stored"] = stored_events(backend, data_dir)

    # Cache misses from 100k devices: the same catalog, answers never reused.
    server = Server(binary, data_dir, {**env, "CACHE_RESULT_DURATION": "0s"})
    against_ceiling(ceiling_binary, answer_file, server, lua_devices(), "updates-100k",
                    "ceiling-100k", args, report)
    server.stop()


def start_rollouts(server):
    """A 1.3.0 bundle per app, and a rollout to it on the production channel of every release,
    held at 50% (a day per step, no device reports failures)."""
    started = time.time()
    connection = server.connection(True)
    canaries = {app: upload(server, app_id(app), "1.3.0", small_zip(f"{app}-1.3.0"), connection)
                for app in range(APPS)}
    status, body = server.request("GET", "/api/v1/releases.list", management=True,
                                  connection=connection)
    assert status == 200, body
    releases = json.loads(body)["data"]
    for release in releases:
        app = int(release["app_id"][len("com.bench.app"):])
        status, body = server.request("POST", "/api/v1/rollouts.start", {
            "release_id": release["id"], "bundle_id": canaries[app], "steps": [50, 100],
            "interval": "24h", "min_devices": 100000,
        }, management=True, connection=connection)
        assert status == 200, body
    connection.close()
    log(f"started {len(releases)} rollouts in {time.time() - started:.1f}s")


def lua_canary_stats():
    """Batches of 200 `set` events for 1.3.0 from the 100,000 devices, each with its own app,
    platform and native build as lua_devices() spreads them (plugins send them with every
    event)."""
    return r"""
local counter = 0
request = function()
  counter = counter + 1
  local events = {}
  for n = 1, 200 do
    local i = (counter * 200 + n) % %DEVICES%
    local platform = (math.floor(i / %APPS%) % 2 == 0) and "android" or "ios"
    local release = math.floor(i / (%APPS% * 2)) % %RELEASES%
    events[n] = string.format(
      '{"app_id":"com.bench.app%d","device_id":"00000000-0000-4000-8000-%012d",'
      .. '"action":"set","version_name":"1.3.0","platform":"%s","version_build":"1.%d.0",'
      .. '"version_code":"%d"}', i % %APPS%, i, platform, release, release + 1)
  end
  return wrk.format("POST", "/stats", {["Content-Type"] = "application/json"},
                    "[" .. table.concat(events, ",") .. "]")
end
delay = function() return 50 end
""".replace("%DEVICES%", str(DEVICES)).replace("%APPS%", str(APPS)).replace(
        "%RELEASES%", str(RELEASES)) + LUA_DONE


def lua_devices_paced(interval_ms):
    return lua_devices() + f"delay = function() return {interval_ms} end\n"


def rollout_benchmark(binary, ceiling_binary, backend, data_dir, args, report):
    """Checks from 100k devices with the cache on, without and then during rollouts; then the
    soak."""
    env = backend_env(backend)
    answer_file = os.path.join(data_dir, "answer.json")
    server = Server(binary, data_dir, env)
    against_ceiling(ceiling_binary, answer_file, server, lua_devices(), "updates-devices",
                    "ceiling-devices", args, report)
    # The same soak without rollouts: its baseline (the stats it posts name a bundle no
    # rollout has yet). Both soaks run at this rate, so their p99 compare.
    soak(server, report["updates-devices"]["rps"] * 0.8, "soak-baseline", report)
    start_rollouts(server)
    against_ceiling(ceiling_binary, answer_file, server, lua_devices(), "updates-rollout",
                    "ceiling-rollout", args, report)

    soak(server, report["soak-baseline"]["target_rps"], "soak", report)
    server.stop()


def soak(server, target, name, report):
    """60 s at `target` requests/s from the 100k devices, in six 10 s windows back to back,
    with a stream of canary `set` stats beside it: p99 and RSS per window."""
    interval_ms = 10
    connections = max(16, round(target * interval_ms / 1000))
    # Each connection also waits for its answers: a short run measures the rate these
    # connections reach, and their number is scaled to the target (at most twice over).
    for _ in range(2):
        reached = wrk(server.device_port, lua_devices_paced(interval_ms), 5, connections)["rps"]
        connections = min(1000, max(16, round(connections * target / reached)))
    log(f"  soak: {connections} connections for {target:.0f}/s")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_canary_stats())
    stats = subprocess.Popen(
        ["wrk", "-t", "1", "-c", "2", "-d", "62s", "--timeout", "10s", "-s", script.name,
         f"http://127.0.0.1:{server.device_port}"], stdout=subprocess.PIPE, text=True)
    windows = []
    for _ in range(6):
        result = wrk(server.device_port, lua_devices_paced(interval_ms), 10, connections)
        result["rss_mib"] = current_rss_mib(server.process.pid)
        windows.append(result)
        log(f"  soak window: {result['rps']:.0f}/s p99 {result['p99_us'] / 1000:.2f} ms "
            f"RSS {result['rss_mib']:.1f} MiB")
    stats_out = stats.communicate()[0]
    os.unlink(script.name)
    stats_line = next(l for l in stats_out.splitlines() if l.startswith("BENCH "))
    stats_result = json.loads(stats_line[len("BENCH "):])
    report[name] = {
        "target_rps": target,
        "connections": connections,
        "windows": [{"rps": w["rps"], "p99_ms": w["p99_us"] / 1000, "rss_mib": w["rss_mib"],
                     "errors": w["errors"] + w["non2xx"]} for w in windows],
        "stats_events_per_s": stats_result["requests"] * 200 / (stats_result["duration_us"] / 1e6),
        "stats_errors": stats_result["errors"] + stats_result["non2xx"],
    }



def big_zip(path, size):
    """A valid bundle of `size` bytes of incompressible data, stored (not deflated)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("index.html", "<html>big</html>")
        with archive.open("noise.bin", "w", force_zip64=True) as noise:
            chunk = os.urandom(1 << 20)
            for i in range(size >> 20):
                noise.write(chunk[i % 7:] + chunk[:i % 7])


def upload_benchmark(binary, backend, data_dir, work_dir, args, report):
    size = args.upload_mib << 20
    zip_path = os.path.join(work_dir, "big.zip")
    big_zip(zip_path, size)
    copies = []
    for _ in range(args.runs):
        target = os.path.join(work_dir, "copy.zip")
        started = time.time()
        shutil.copyfile(zip_path, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        copies.append(time.time() - started)
        os.unlink(target)
    uploads, rss = [], []
    for run in range(args.runs):
        server = Server(binary, os.path.join(data_dir, f"upload-{run}"), backend_env(backend))
        boundary, head, tail = multipart({"app_id": "com.bench.big", "version_name": f"9.{run}.0"})
        length = len(head) + os.path.getsize(zip_path) + len(tail)
        connection = server.connection(True)
        started = time.time()
        connection.putrequest("POST", "/api/v1/bundles.upload")
        connection.putheader("x-api-key", KEY)
        connection.putheader("content-type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("content-length", str(length))
        connection.endheaders()
        connection.send(head)
        with open(zip_path, "rb") as f:
            while chunk := f.read(1 << 20):
                connection.send(chunk)
        connection.send(tail)
        response = connection.getresponse()
        body = response.read()
        uploads.append(time.time() - started)
        assert response.status == 200, body
        rss.append(peak_rss_mib(server.process.pid))
        server.stop()
    copy_s, upload_s = statistics.median(copies), statistics.median(uploads)
    report["upload"] = {
        "size_mib": args.upload_mib,
        "copy_mib_per_s": args.upload_mib / copy_s,
        "upload_mib_per_s": args.upload_mib / upload_s,
        "ratio_to_copy": copy_s / upload_s,
        "peak_rss_mib": max(rss),
        "runs": args.runs,
    }


def print_report(results):
    for backend, report in results["backends"].items():
        print(f"\n## {backend}\n")
        if "ceiling" in report:
            print("| scenario | requests/s | ratio to ceiling | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB |")
            print("|---|---|---|---|---|---|---|---|")
        for name, ceiling in (("ceiling", None), ("updates-hit", "ceiling"),
                              ("ceiling-latency-half", None), ("latency-half", None),
                              ("ceiling-100k", None),
                              ("updates-100k", "ceiling-100k"), ("ceiling-devices", None),
                              ("updates-devices", "ceiling-devices"),
                              ("ceiling-rollout", None), ("updates-rollout", "ceiling-rollout")):
            r = report.get(name)
            if not r:
                continue
            ratio = f"{r['rps'] / report[ceiling]['rps']:.2f}" if ceiling else ""
            rps = f"{r['rps']:.0f}"
            if name in ("latency-half", "ceiling-latency-half"):
                rps += f" (target {r['target_rps']:.0f})"
            rss = f"{r['peak_rss_mib']:.1f}" if "peak_rss_mib" in r else ""
            print(f"| {name} | {rps} | {ratio} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['p999_ms']:.2f} | {r['errors']} | {rss} |")
        s = report.get("stats")
        if s:
            print(f"\nstats: {s['events_per_s']:.0f} events/s in batches of 200 "
                  f"(p99 {s['p99_ms']:.2f} ms); acknowledged {s['events_acknowledged']}, "
                  f"stored {s['events_stored']}")
        for soak_name in ("soak-baseline", "soak"):
            soak = report.get(soak_name)
            if not soak:
                continue
            print(f"{soak_name} at {soak['target_rps']:.0f}/s (80% of updates-devices' peak) "
                  f"with {soak['stats_events_per_s']:.0f} stats events/s beside it:")
            for n, w in enumerate(soak["windows"]):
                print(f"  {n * 10}-{n * 10 + 10} s: {w['rps']:.0f}/s, p99 {w['p99_ms']:.2f} ms, "
                      f"RSS {w['rss_mib']:.1f} MiB, errors {w['errors']}")
        u = report.get("upload")
        if u:
            print(f"upload {u['size_mib']} MiB: {u['upload_mib_per_s']:.0f} MiB/s vs cp "
                  f"{u['copy_mib_per_s']:.0f} MiB/s (ratio {u['ratio_to_copy']:.2f}), "
                  f"server peak RSS {u['peak_rss_mib']:.1f} MiB")
        delta.print_report(report.get("delta"))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="embedded",
                        help="comma-separated: embedded, external (MongoDB + S3)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--upload-mib", type=int, default=500)
    parser.add_argument("--binary", default="",
                        help="measure this capgo-server binary instead of the tree's build (a "
                             "baseline for a before/after comparison; the ceiling is still built)")
    parser.add_argument("--only", default="",
                        help="comma-separated parts to run: throughput, rollout, upload, delta "
                             "(all by default)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk (scripts/bench installs it)")
    binary, ceiling_binary = build()
    binary = args.binary or binary
    results = {
        "machine": {"cores": os.cpu_count(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "settings": {"threads": THREADS, "connections": CONNECTIONS, "seconds": args.seconds,
                     "runs": args.runs},
        "backends": {},
    }
    # The scratch folders live in the checkout's target/, which a fresh clone built elsewhere
    # (CARGO_TARGET_DIR) does not have.
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    for backend in args.backends.split(","):
        log(f"== {backend}")
        report = results["backends"][backend] = {}
        with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target")) as work:
            data_dir = os.path.join(work, "data")
            os.makedirs(data_dir)
            parts = set(filter(None, args.only.split(","))) or {"throughput", "rollout", "upload",
                                                                "delta"}
            # The rollout part reuses the catalog and the answer file the throughput part made.
            if parts & {"throughput", "rollout"}:
                throughput(binary, ceiling_binary, backend, data_dir, args, report)
            if "rollout" in parts:
                rollout_benchmark(binary, ceiling_binary, backend, data_dir, args, report)
            if "upload" in parts:
                upload_benchmark(binary, backend, data_dir, work, args, report)
            if "delta" in parts:
                delta.benchmark(lambda: Server(binary, os.path.join(data_dir, "delta"),
                                               backend_env(backend)), upload, work, report)
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"machine: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB; "
          f"wrk {THREADS} threads, {CONNECTIONS} connections, {args.seconds}s x {args.runs} runs")
    print_report(results)


if __name__ == "__main__":
    main()
