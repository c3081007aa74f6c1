#!/usr/bin/env python3
"""CPU time, context switches and system calls per device check, for capgo-server and for the
ceiling server under the same wrk load (BENCHMARKS.md, "The device check's cost").

    python3 bench/cpu_per_check.py <capgo-server binary> [seconds]

Needs perf (`apt-get install linux-perf`) and wrk. Seeds one app (as bench/instructions.py),
saves the answer a plugin-8 device gets, starts the ceiling server (`<dir>/examples/ceiling`,
as `scripts/bench` builds it) with those bytes, then twice in turn: wrk (2 threads,
64 connections, the cache-hit body) for `seconds` on each server while `perf stat` counts that
server's task clock (user and kernel time of all its threads), context switches and system
call entries. Prints one JSON object: per check, for each server and round.

Where wrk's ratio to the ceiling mixes both servers' cost with wrk's own on two shared cores,
this separates them: what one check costs the server, in CPU microseconds, beside what the
ceiling pays for the same bytes on the same sockets.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's server, seeding, device bodies and wrk)

EVENTS = ["task-clock", "context-switches", "raw_syscalls:sys_enter"]


def per_check(pid, port, script, seconds):
    """wrk against `port` while perf counts process `pid`; the counts divided by the checks."""
    run.wrk(port, script, 2)  # warm-up
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    result = run.wrk(port, script, seconds)
    perf.send_signal(signal.SIGINT)
    output = perf.communicate()[1]
    counts = {}
    for line in output.strip().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in EVENTS:
            try:
                counts[fields[2]] = float(fields[0])
            except ValueError:  # "<not supported>", "<not counted>"
                pass
    missing = [event for event in EVENTS if event not in counts]
    if missing:
        raise SystemExit(f"perf did not count {', '.join(missing)}:\n{output}")
    if result["errors"] or result["non2xx"]:
        raise SystemExit(f"wrk saw errors: {result}")
    checks = result["requests"]
    return {
        "checks_per_s": round(result["rps"]),
        # perf reports task-clock in milliseconds.
        "cpu_us": round(counts["task-clock"] * 1000 / checks, 2),
        "context_switches": round(counts["context-switches"] / checks, 3),
        "syscalls": round(counts["raw_syscalls:sys_enter"] / checks, 2),
    }


def main():
    binary = os.path.abspath(sys.argv[1])
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    ceiling = run.ceiling_beside(binary)
    if not os.path.exists(ceiling):
        raise SystemExit(f"no ceiling server at {ceiling}: build it with scripts/bench")
    work = tempfile.mkdtemp(prefix="capgo-cpu-")  # kept for inspection (the data directory)
    server = run.Server(binary, os.path.join(work, "data"), {})
    ceiling_process = None
    try:
        run.seed_one_app(server)
        body = run.device_body()
        status, answer = server.request("POST", "/updates", json.dumps(body).encode(),
                                        {"content-type": "application/json"})
        assert status == 200 and b'"version":"1.1.0"' in answer, answer
        answer_file = os.path.join(work, "answer.json")
        with open(answer_file, "wb") as f:
            f.write(answer)
        port = run.free_port()
        ceiling_process = subprocess.Popen([ceiling, str(port), answer_file],
                                           stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        script = run.lua_fixed("/updates", body)
        rounds = []
        for _ in range(2):
            rounds.append({
                "ceiling": per_check(ceiling_process.pid, port, script, seconds),
                "capgo-server": per_check(server.process.pid, server.device_port, script,
                                          seconds),
            })
        print(json.dumps({"binary": binary, "seconds": seconds, "rounds": rounds}, indent=2))
    finally:
        if ceiling_process:
            ceiling_process.terminate()
            ceiling_process.wait()
        server.stop()


if __name__ == "__main__":
    main()
