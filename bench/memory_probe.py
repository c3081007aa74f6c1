#!/usr/bin/env python3
"""Where capgo-server's memory goes under load (BENCHMARKS.md, "The device check's cost").

    python3 bench/memory_probe.py [--seconds N] <capgo-server binary> [fixed|devices] [NAME=VALUE ...]

Seeds the benchmark's catalog (2,000 releases), then runs N s (10 by default; the benchmark's
scenarios run 60 s and more in all) of wrk with the answer cache off
(CACHE_RESULT_DURATION=0s), from one device (`fixed`) or from the 100,000 devices of
`updates-100k` (`devices`, the default), and prints the server's RSS (anonymous and
file-backed, MiB) and thread count after seeding, every 2 s under load (less often in longer
runs: about 30 lines), and 12 s after it (once the fleet tally was written). Extra NAME=VALUE arguments go to the server's environment
(for example MIMALLOC_PURGE_DELAY=0, to see whether freed pages are kept).
"""

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's server, seeding, device bodies and wrk)


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, value = line.split(":", 1)
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) // 1024
            elif name == "Threads":
                fields[name] = int(value)
    return fields


def main():
    args = sys.argv[1:]
    seconds = 10
    if args[:1] == ["--seconds"]:
        seconds, args = int(args[1]), args[2:]
    binary = os.path.abspath(args[0])
    load = args[1] if len(args) > 1 else "devices"
    extra = dict(arg.split("=", 1) for arg in args[2:])
    data = tempfile.mkdtemp(prefix="capgo-memory-")
    server = run.Server(binary, data, {"CACHE_RESULT_DURATION": "0s", **extra})
    try:
        run.seed(server)
        pid = server.process.pid
        print("after seeding", status(pid), flush=True)
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(status(pid))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        script = (run.lua_fixed("/updates", run.device_body()) if load == "fixed"
                  else run.lua_devices())
        result = run.wrk(server.device_port, script, seconds)
        done.set()
        sampler.join()
        print("requests/s", round(result["rps"]), flush=True)
        for sampled in samples[::max(4, len(samples) // 30)]:
            print("under load", sampled)
        time.sleep(12)
        print("after the tally's flush", status(pid))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
