"""The `delta` part of the benchmark (bench/run.py --only delta; see BENCHMARKS.md).

What a device downloads for an update that changed one line of an app's source, against the
bundle's zip, with a real web build: the React template of create-vite, built by Vite before
and after one line of src/App.jsx changed. Three layouts of the same app:

  single-chunk         the template as is (Vite puts React and the app in one JS chunk)
  vendor-split         manualChunks {vendor: ['react', 'react-dom']}
  vendor-split-client  the same plus 'react-dom/client': React 19's renderer is that module,
                       not 'react-dom', so only with it does React leave the app's chunk

Both builds of a layout are zipped in a top folder dist/ and uploaded as 1.0.0 and 1.0.1 of a
fresh app; an Android release has 1.0.0 builtin and production on 1.0.1. A simulated plugin
8.51.14 device holding 1.0.0's files checks in and installs from the answer's manifest as the
plugin does (keeps files whose hash it has, downloads the others, decompresses `.br`, checks
every SHA-256) and must end with exactly 1.0.1's files; a fresh device (no files) and a
fresh plugin 5.10.0 device (plain files, no `.br`) give the full-install sizes.

The app is created once in a cache folder outside the repository (CAPGO_BENCH_VITE, default
/var/tmp/capgo-bench-vite): `npm create vite@6.5.0 app -- --template react`, `npm install`.
"""

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
import zipfile

CACHE = os.environ.get("CAPGO_BENCH_VITE") or "/var/tmp/capgo-bench-vite"
CREATE_VITE = "vite@6.5.0"
VARIANTS = (
    ("single-chunk", None),
    ("vendor-split", ["react", "react-dom"]),
    ("vendor-split-client", ["react", "react-dom", "react-dom/client"]),
)
# The one line of src/App.jsx that v2 changes.
LINE, CHANGED_LINE = "<h1>Vite + React</h1>", "<h1>Vite + React, version 2</h1>"


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(command, cwd):
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{done.stdout}{done.stderr}")


def ensure_app():
    """The create-vite React app in the cache folder, with its node_modules."""
    app = os.path.join(CACHE, "app")
    if not os.path.isdir(os.path.join(app, "node_modules")):
        os.makedirs(CACHE, exist_ok=True)
        if not os.path.isdir(app):
            log(f"creating the Vite app in {CACHE}")
            run(["npm", "create", "-y", CREATE_VITE, "app", "--", "--template", "react"], CACHE)
        log("npm install")
        run(["npm", "install", "--no-audit", "--no-fund"], app)
    return app


def vendor_config(name, chunks):
    """A config file beside the app: the template's own config with React in a chunk."""
    path = os.path.join(CACHE, f"vite.{name}.config.mjs")
    output = {"manualChunks": {"vendor": chunks}}
    with open(path, "w") as f:
        f.write("// Written by capgo-server's bench/delta.py.\n"
                "import base from './app/vite.config.js'\n"
                "export default {\n"
                "  ...base,\n"
                "  build: {\n"
                "    ...(base.build || {}),\n"
                f"    rollupOptions: {{ output: {json.dumps(output)} }},\n"
                "  },\n"
                "}\n")
    return path


def vite_build(app, out, config):
    command = ["npx", "vite", "build", "--outDir", out, "--emptyOutDir"]
    if config:
        command += ["--config", config]
    run(command, app)


def read_tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root).replace(os.sep, "/")] = f.read()
    return files


def builds(app, work, name, chunks):
    """v1 and v2 of one layout ({path: bytes} each); v2 with one line of App.jsx changed."""
    config = vendor_config(name, chunks) if chunks else None
    app_jsx = os.path.join(app, "src", "App.jsx")
    with open(app_jsx) as f:
        original = f.read()
    if original.count(LINE) != 1:
        raise SystemExit(f"{app_jsx} does not have the line {LINE!r} once (left changed?)")
    v1, v2 = os.path.join(work, f"{name}-v1"), os.path.join(work, f"{name}-v2")
    vite_build(app, v1, config)
    try:
        with open(app_jsx, "w") as f:
            f.write(original.replace(LINE, CHANGED_LINE))
        vite_build(app, v2, config)
    finally:
        with open(app_jsx, "w") as f:
            f.write(original)
    return read_tree(v1), read_tree(v2)


def zip_build(files):
    """The bundle zip, files in a top folder dist/ as `capgo bundle zip` of dist/ makes it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(f"dist/{name}", files[name])
    return buffer.getvalue()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def download(url):
    """GET an absolute URL (no proxy from the environment), the body's bytes."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, (url, response.status, body[:200])
    assert response.getheader("content-encoding") is None, url
    return body


class Device:
    """A device's files for the app, installed from a manifest as the plugin does."""

    def __init__(self, files):
        self.files = dict(files)
        self.downloaded = 0
        self.downloads = 0

    def install(self, manifest):
        import brotli

        have = {sha256(data): data for data in self.files.values()}
        installed = {}
        for entry in manifest:
            name, digest = entry["file_name"], entry["file_hash"]
            compressed = name.endswith(".br")
            path = name[:-3] if compressed else name
            data = have.get(digest)
            if data is None:
                body = download(entry["download_url"])
                self.downloaded += len(body)
                self.downloads += 1
                data = brotli.decompress(body) if compressed else body
            assert sha256(data) == digest, name
            assert path not in installed, f"{path} twice"
            installed[path] = data
        self.files = installed


def device_body(app, plugin):
    return {
        "platform": "android", "device_id": str(uuid.uuid4()), "app_id": app,
        "version_name": "1.0.0", "version_build": "1.0.0", "version_code": "10",
        "version_os": "14", "plugin_version": plugin, "is_emulator": False, "is_prod": True,
        "custom_id": "", "defaultChannel": "",
    }


def manifest_for(server, app, plugin, zip_v2):
    status, body = server.request("POST", "/updates", device_body(app, plugin))
    answer = json.loads(body)
    assert status == 200 and answer.get("version") == "1.0.1", answer
    assert answer["checksum"] == sha256(zip_v2), answer
    assert "manifest" in answer, answer
    return answer["manifest"]


def measure(server, upload, app, v1, v2):
    zip_v1, zip_v2 = zip_build(v1), zip_build(v2)
    builtin = upload(server, app, "1.0.0", zip_v1)
    started = time.perf_counter()
    next_bundle = upload(server, app, "1.0.1", zip_v2)
    upload_s = time.perf_counter() - started
    status, body = server.request("POST", "/api/v1/releases.create", {
        "platform": "android", "app_id": app, "version_name": "1.0.0", "version_code": "10",
        "builtin_bundle_id": builtin,
    }, management=True)
    assert status == 200, body
    status, body = server.request("POST", "/api/v1/releases.set-active", {
        "release_id": json.loads(body)["release"]["id"], "bundle_id": next_bundle,
        "channel": "production",
    }, management=True)
    assert status == 200, body

    manifest = manifest_for(server, app, "8.51.14", zip_v2)
    device = Device(v1)
    device.install(manifest)
    assert device.files == v2, "the updated device holds exactly v2's files"
    fresh = Device({})
    fresh.install(manifest)
    assert fresh.files == v2
    plain_manifest = manifest_for(server, app, "5.10.0", zip_v2)
    assert not any(e["file_name"].endswith(".br") for e in plain_manifest), plain_manifest
    plain = Device({})
    plain.install(plain_manifest)
    assert plain.files == v2

    changed = sorted(path for path, data in v2.items() if v1.get(path) != data)
    return {
        "files": len(v2),
        "files_changed": len(changed),
        "changed": changed,
        "sizes": {path: len(data) for path, data in sorted(v2.items())},
        "removed": sorted(set(v1) - set(v2)),
        "zip_bytes": len(zip_v2),
        "manifest_br_entries": sum(e["file_name"].endswith(".br") for e in manifest),
        "update_downloads": device.downloads,
        "update_bytes": device.downloaded,
        "update_ratio": device.downloaded / len(zip_v2),
        "fresh_bytes": fresh.downloaded,
        "fresh_ratio": fresh.downloaded / len(zip_v2),
        "fresh_plain_bytes": plain.downloaded,
        "fresh_plain_ratio": plain.downloaded / len(zip_v2),
        "upload_v2_s": upload_s,
    }


def benchmark(start_server, upload, work_dir, report):
    """Builds every layout, then measures them on one server from `start_server()`; `upload`
    is run.py's (server, app_id, version, zip bytes) -> bundle id."""
    try:
        import brotli  # noqa: F401
    except ImportError:
        raise SystemExit("the delta part needs Python's brotli: pip install brotli "
                         "(scripts/bench installs it)")
    app = ensure_app()
    with open(os.path.join(app, "node_modules", "vite", "package.json")) as f:
        vite_version = json.load(f)["version"]
    built = {}
    for name, chunks in VARIANTS:
        log(f"delta: vite build of {name}, v1 and v2")
        built[name] = builds(app, work_dir, name, chunks)
    server = start_server()
    variants = {}
    try:
        for name, chunks in VARIANTS:
            v1, v2 = built[name]
            app_id = f"com.bench.delta.{name.replace('-', '')}.{uuid.uuid4().hex[:8]}"
            variants[name] = {"manual_chunks": chunks, **measure(server, upload, app_id, v1, v2)}
            r = variants[name]
            log(f"  {name}: {r['files_changed']} of {r['files']} files changed, update "
                f"{r['update_bytes']} bytes against the {r['zip_bytes']}-byte zip")
    finally:
        server.stop()
    report["delta"] = {"vite": vite_version, "change": f"{LINE} -> {CHANGED_LINE}",
                       "variants": variants}


def print_report(delta):
    if not delta:
        return
    print(f"\ndelta: one line of src/App.jsx changed (create-vite React template, Vite "
          f"{delta['vite']}), plugin 8.51.14 Android device holding v1:")
    print("| layout | files | changed | zip bytes | update bytes | update/zip | "
          "fresh bytes (.br) | fresh/zip | fresh 5.x (plain) | v2 upload s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in delta["variants"].items():
        print(f"| {name} | {r['files']} | {r['files_changed']} | {r['zip_bytes']} | "
              f"{r['update_bytes']} | {r['update_ratio']:.2f} | {r['fresh_bytes']} | "
              f"{r['fresh_ratio']:.2f} | {r['fresh_plain_bytes']} | {r['upload_v2_s']:.3f} |")
