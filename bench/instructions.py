#!/usr/bin/env python3
"""Instructions per device check, counted by callgrind: a measure of the check path's cost that
does not move with the machine's load (wrk ratios on two shared cores move by ±0.1 from run to
run). For before/after comparisons of one change (BENCHMARKS.md, "The device check's cost").

    python3 bench/instructions.py <capgo-server binary> [requests]

Needs valgrind (`apt-get install valgrind`); the release profile's line tables give the dumps
function names.

Starts the binary under `valgrind --tool=callgrind`, seeds one app (a release of android 1.0.0
whose production channel serves 1.1.0), warms up, then counts the instructions of `requests`
`POST /updates` over one keep-alive connection (callgrind's counters are zeroed before and
dumped after), in two scenarios: `hit` (one device, answered from the answer cache) and `miss`
(distinct devices with CACHE_RESULT_DURATION=0s: every check reads the store). Prints one JSON
object: instructions per request for each, and the dump files (read them with
`callgrind_annotate`). When the benchmark's ceiling server was built beside the binary
(`<dir>/examples/ceiling`, as `scripts/bench` builds it), its instructions for the same check
and answer bytes are counted too: the part of a check no server on this stack can avoid.
"""

import glob
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's server, seeding and device bodies)


def total_instructions(dump):
    with open(dump) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {dump}")


def counted(out, requests, check):
    """Warms up with 200 checks, then counts the instructions of `requests` more (callgrind's
    counters zeroed before, dumped after): instructions per check and the dump file."""
    for n in range(200):
        check(n)
    pid = subprocess.run(["pgrep", "-f", f"callgrind-out-file={out}"], capture_output=True,
                         text=True).stdout.split()
    valgrind_pid = pid[0]
    subprocess.run(["callgrind_control", "-z", valgrind_pid], check=True, capture_output=True)
    for n in range(requests):
        check(1000 + n)
    subprocess.run(["callgrind_control", "-d", "counted", valgrind_pid], check=True,
                   capture_output=True)
    time.sleep(1)
    dumps = sorted(glob.glob(f"{out}.*"), key=os.path.getmtime)
    dump = [d for d in dumps if not d.endswith(valgrind_pid)][-1]
    return total_instructions(dump) / requests, dump


def under_callgrind(out, command):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
            "--collect-atstart=yes", *command]


def scenario(binary, name, env, requests, work):
    """capgo-server's checks; returns (instructions per check, dump, the last answer)."""
    out = os.path.join(work, f"callgrind.{name}")
    wrapper = os.path.join(work, f"under-callgrind-{name}")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec " + " ".join(under_callgrind(out, [binary])) + "\n")
    os.chmod(wrapper, 0o755)
    server = run.Server(wrapper, os.path.join(work, f"data-{name}"), env)
    try:
        run.seed_one_app(server)
        device = server.connection(False)
        answers = []

        def check(n):
            body = run.device_body(0, "android", 0, device=n if name == "miss" else 0)
            status, answer = server.request("POST", "/updates", json.dumps(body).encode(),
                                            {"content-type": "application/json"},
                                            connection=device)
            assert status == 200 and b'"version":"1.1.0"' in answer, answer
            answers[:] = [answer]

        return (*counted(out, requests, check), answers[0])
    finally:
        server.stop()


def ceiling_scenario(ceiling, answer, requests, work):
    """bench/ceiling.rs answering the same check with the same bytes."""
    out = os.path.join(work, "callgrind.ceiling")
    answer_file = os.path.join(work, "answer.json")
    with open(answer_file, "wb") as f:
        f.write(answer)
    port = run.free_port()
    process = subprocess.Popen(under_callgrind(out, [ceiling, str(port), answer_file]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the ceiling server did not start")
                time.sleep(0.1)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        body = json.dumps(run.device_body(0, "android", 0, device=0)).encode()

        def check(_):
            connection.request("POST", "/updates", body, {"content-type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and response.read() == answer

        return counted(out, requests, check)
    finally:
        process.terminate()
        process.wait()


def main():
    binary = os.path.abspath(sys.argv[1])
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    ceiling = run.ceiling_beside(binary)
    work = tempfile.mkdtemp(prefix="capgo-instructions-")
    results = {"binary": binary, "requests": requests}
    answer = None
    for name, env in [("hit", {}), ("miss", {"CACHE_RESULT_DURATION": "0s"})]:
        per_request, dump, last = scenario(binary, name, env, requests, work)
        answer = answer or last
        results[name] = {"instructions_per_request": round(per_request), "dump": dump}
    if os.path.exists(ceiling):
        per_request, dump = ceiling_scenario(ceiling, answer, requests, work)
        results["ceiling"] = {"instructions_per_request": round(per_request), "dump": dump}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
