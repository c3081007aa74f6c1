// capgo-server web UI: plain JavaScript, no build step. Talks to the management API with the
// API key kept in this tab's sessionStorage. Errors from the server are shown as they come.
"use strict";

// Uncaught errors are kept where the end-to-end test can read them.
window.__capgoErrors = [];
window.addEventListener("error", (e) => window.__capgoErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__capgoErrors.push(String(e.reason)));
window.addEventListener("securitypolicyviolation", (e) => window.__capgoErrors.push(`CSP blocked ${e.violatedDirective}`));

const KEY = "capgo.apiKey";
const main = document.getElementById("main");

/** Builds an element: h("td", {class: "x", onclick: fn}, "text", child). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function toast(message) {
  const box = h("div", {}, message);
  document.getElementById("toast").append(box);
  setTimeout(() => box.remove(), 5000);
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { "x-api-key": sessionStorage.getItem(KEY) || "" };
  if (body && !(body instanceof FormData)) headers["content-type"] = "application/json";
  const response = await fetch("/api/v1/" + path, {
    method, headers, body: body && !(body instanceof FormData) ? JSON.stringify(body) : body,
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("Your API key was refused; log in again.");
    throw new ApiError("unauthorized");
  }
  if (!response.ok) throw new ApiError(data.error || `HTTP ${response.status}`);
  return data;
}

/** Runs an action, showing a server error in `where` (or as a toast). */
async function attempt(action, where) {
  if (where) where.textContent = "";
  try {
    return await action();
  } catch (e) {
    if (e instanceof ApiError && e.message === "unauthorized") return undefined;
    if (where) where.textContent = e.message; else toast(e.message);
    return undefined;
  }
}

function formatSize(bytes) {
  if (bytes >= 1 << 20) return (bytes / (1 << 20)).toFixed(1) + " MiB";
  if (bytes >= 1 << 10) return (bytes / (1 << 10)).toFixed(1) + " KiB";
  return bytes + " B";
}

function formatDate(text) {
  return text ? new Date(text).toLocaleString() : "";
}

/** Asks for confirmation in a modal dialog; resolves true when confirmed. */
function confirmDialog(title, text, confirmLabel, danger) {
  const dialog = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  form.replaceChildren(
    h("h2", {}, title), h("p", { id: "dialog-text" }, text),
    h("menu", {},
      h("button", { value: "cancel", class: "secondary", type: "submit" }, "Cancel"),
      h("button", { value: "ok", id: "dialog-ok", class: danger ? "danger" : "", type: "submit" }, confirmLabel)));
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// ---- login --------------------------------------------------------------------------------

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message || "");
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, key.value.trim());
      const ok = await attempt(() => api("GET", "releases.list"), error);
      if (ok) location.hash = "#/releases", route();
    },
  },
    h("label", { for: "api-key" }, "Management API key (x-api-key)"), key,
    h("p", {}, h("button", { type: "submit", id: "login" }, "Log in")), error);
  main.replaceChildren(h("h1", {}, "Log in"), h("section", { class: "card" }, form));
  fetch("/apipublic/v1/oauth2.config").then((r) => r.json()).then((config) => {
    if (config.enabled) {
      form.append(h("p", { class: "muted" }, `Single sign-on (${config.issuer}) is configured, but this server version accepts API keys only.`));
    }
  }).catch(() => {});
  key.focus();
}

// ---- releases -----------------------------------------------------------------------------

async function showReleases() {
  const [releases, bundles] = await Promise.all([api("GET", "releases.list"), api("GET", "bundles.list")]);
  const byId = Object.fromEntries(bundles.data.map((b) => [b.id, b]));
  const name = (id) => (byId[id] ? byId[id].version_name : id);
  const groups = {};
  for (const r of releases.data) (groups[`${r.app_id} · ${r.platform}`] ||= []).push(r);

  const content = [h("h1", {}, "Releases"), createReleaseForm(bundles.data)];
  if (!releases.data.length) content.push(h("p", { class: "muted" }, "No releases yet: register a store build above."));
  for (const [group, items] of Object.entries(groups).sort()) {
    const rows = items.map((r) => {
      const owned = r.owner ? h("span", { class: "badge", title: `Managed by the Kubernetes resource ${r.owner}: change it there` }, "Kubernetes") : null;
      const channels = Object.keys(r.channels).length ? r.channels : { production: r.builtin_bundle_id };
      return h("tr", { "data-release": r.id },
        h("td", { "data-label": "Native version" }, `${r.version_name} (${r.version_code})`, " ", owned),
        h("td", { "data-label": "Builtin" }, name(r.builtin_bundle_id)),
        h("td", { "data-label": "Channels" }, Object.entries(channels).map(([channel, id]) =>
          h("div", { class: "channel" }, h("strong", {}, channel + ":"), " ", name(id),
            r.owner ? null : h("button", { type: "button", class: "secondary", "data-promote": `${r.id}:${channel}`,
              onclick: () => promoteDialog(r, channel, bundles.data) }, "Change")))),
        h("td", { "data-label": "Released" }, formatDate(r.release_date) || h("span", { class: "muted" }, "—"), " ",
          r.owner ? null : h("button", { type: "button", class: "link", "data-release-date": r.id, onclick: () => releaseDateDialog(r) }, "Edit")),
        h("td", { "data-label": "Actions" }, r.owner ? h("span", { class: "muted" }, `Read-only: managed by ${r.owner}`) : [
          h("button", { type: "button", class: "secondary", onclick: () => promoteDialog(r, "", bundles.data) }, "Add channel"), " ",
          h("button", { type: "button", class: "danger", onclick: () => deleteRelease(r) }, "Delete")]));
    });
    content.push(h("h2", {}, group), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Native version", "Builtin", "Channels", "Released", "Actions"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows))));
  }
  main.replaceChildren(...content);
}

function createReleaseForm(bundles) {
  const error = h("p", { class: "error", role: "alert" });
  const field = (id, label, input) => h("div", {}, h("label", { for: id }, label), input);
  const platform = h("select", { id: "new-platform" }, ["android", "ios", "electron"].map((p) => h("option", { value: p }, p)));
  const appId = h("input", { id: "new-app-id", placeholder: "com.example.app", required: true });
  const version = h("input", { id: "new-version-name", placeholder: "1.0.0", required: true });
  const code = h("input", { id: "new-version-code", placeholder: "10", required: true });
  const builtin = h("select", { id: "new-builtin", required: true },
    h("option", { value: "" }, "Choose the bundle inside the store build"),
    bundles.map((b) => h("option", { value: b.id }, `${b.app_id} ${b.version_name}`)));
  return h("section", { class: "card" }, h("h2", {}, "Register a store build"), h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const done = await attempt(() => api("POST", "releases.create", {
        platform: platform.value, app_id: appId.value.trim(), version_name: version.value.trim(),
        version_code: code.value.trim(), builtin_bundle_id: builtin.value,
      }), error);
      if (done) { toast("Release created"); route(); }
    },
  }, h("div", { class: "row" }, field("new-platform", "Platform", platform), field("new-app-id", "App id", appId),
    field("new-version-name", "Native version", version), field("new-version-code", "Build number", code),
    field("new-builtin", "Builtin bundle", builtin)),
  h("p", {}, h("button", { type: "submit", id: "create-release" }, "Create release")), error));
}

async function promoteDialog(release, channel, bundles) {
  const dialog = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  const candidates = bundles.filter((b) => b.app_id === release.app_id);
  const channelInput = h("input", { id: "promote-channel", value: channel || "", placeholder: "production", required: true });
  const bundle = h("select", { id: "promote-bundle" }, candidates.map((b) =>
    h("option", { value: b.id }, b.id === release.builtin_bundle_id ? `${b.version_name} (builtin: roll back)` : b.version_name)));
  const explain = h("p", { id: "promote-explain" });
  const describe = () => {
    const chosen = candidates.find((b) => b.id === bundle.value);
    const who = `Devices of ${release.platform} ${release.app_id} ${release.version_name} (${release.version_code}) on channel "${channelInput.value || "production"}"`;
    explain.textContent = !chosen ? "" : chosen.id === release.builtin_bundle_id
      ? `${who} go back to the bundle inside the app (${chosen.version_name}) at their next check.`
      : `${who} will download ${chosen.version_name} at their next check.`;
  };
  bundle.addEventListener("change", describe);
  channelInput.addEventListener("input", describe);
  describe();
  form.replaceChildren(h("h2", {}, "Choose what a channel serves"),
    h("label", { for: "promote-channel" }, "Channel"), channelInput,
    h("label", { for: "promote-bundle" }, "Bundle"), bundle, explain,
    h("menu", {}, h("button", { value: "cancel", class: "secondary", type: "submit", formnovalidate: true }, "Cancel"),
      h("button", { value: "ok", id: "promote-confirm", type: "submit" }, "Confirm")));
  dialog.returnValue = "";
  dialog.showModal();
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "ok") return;
    const done = await attempt(() => api("POST", "releases.set-active",
      { release_id: release.id, bundle_id: bundle.value, channel: channelInput.value.trim() || "production" }));
    if (done) { toast("Channel updated"); route(); }
  }, { once: true });
}

/** Sets or clears the date a release reached the stores. */
async function releaseDateDialog(release) {
  const dialog = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  const input = h("input", { id: "release-date", type: "date", value: release.release_date ? release.release_date.slice(0, 10) : "" });
  form.replaceChildren(h("h2", {}, `Release date of ${release.platform} ${release.version_name} (${release.version_code})`),
    h("label", { for: "release-date" }, "Published on (empty clears it)"), input,
    h("menu", {}, h("button", { value: "cancel", class: "secondary", type: "submit" }, "Cancel"),
      h("button", { value: "ok", id: "release-date-save", type: "submit" }, "Save")));
  dialog.returnValue = "";
  dialog.showModal();
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "ok") return;
    const date = input.value ? `${input.value}T00:00:00Z` : null;
    if (await attempt(() => api("POST", "releases.update", { release_id: release.id, release_date: date }))) {
      toast("Release date saved");
      route();
    }
  }, { once: true });
}

async function deleteRelease(release) {
  const confirmed = await confirmDialog("Delete this release?",
    `Devices of ${release.platform} ${release.app_id} ${release.version_name} (${release.version_code}) will stop getting updates.`, "Delete", true);
  if (!confirmed) return;
  if (await attempt(() => api("POST", "releases.delete", { release_id: release.id }))) { toast("Release deleted"); route(); }
}

// ---- bundles ------------------------------------------------------------------------------

async function showBundles() {
  const [bundles, releases] = await Promise.all([api("GET", "bundles.list"), api("GET", "releases.list")]);
  const users = (id) => releases.data.filter((r) => r.builtin_bundle_id === id || Object.values(r.channels).includes(id))
    .map((r) => `${r.platform} ${r.version_name} (${r.version_code})`);
  const rows = bundles.data.map((b) => h("tr", { "data-bundle": b.id },
    h("td", { "data-label": "Version" }, h("strong", {}, b.version_name), " ", b.owner ? h("span", { class: "badge", title: `Managed by ${b.owner}` }, "Kubernetes") : null,
      h("div", { class: "muted" }, b.app_id)),
    h("td", { "data-label": "Size" }, formatSize(b.size)),
    h("td", { "data-label": "Checksum" }, h("code", { title: b.sha256 }, b.sha256.slice(0, 12) + "…"), b.encrypted ? " (encrypted)" : ""),
    h("td", { "data-label": "Created" }, formatDate(b.created_at)),
    h("td", { "data-label": "Used by" }, users(b.id).join(", ") || h("span", { class: "muted" }, "no release")),
    h("td", { "data-label": "Devices" }, h("button", { type: "button", class: "secondary", "data-activity": b.id,
      onclick: () => attempt(() => showActivity(b)) }, "Activity"))));
  main.replaceChildren(h("h1", {}, "Bundles"), uploadForm(),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Version", "Size", "Checksum", "Created", "Used by", "Devices"].map((t) => h("th", {}, t)))),
      h("tbody", { id: "bundle-rows" }, rows))),
    h("section", { id: "activity", "aria-live": "polite" }),
    bundles.data.length ? null : h("p", { class: "muted" }, "No bundles yet: upload the zip of your web build above."));
}

const SERIES = [["downloads", "Downloads", "#0b62d6"], ["installs", "Installs", "#067647"], ["failures", "Failures", "#b42318"]];

/** Device activity of one bundle over the last 14 days, from the stats devices send. */
async function showActivity(bundle) {
  const data = await api("GET", `bundles.activity?bundle_id=${encodeURIComponent(bundle.id)}&days=14`);
  const total = (key) => data.daily.reduce((sum, day) => sum + day[key], 0);
  const section = document.getElementById("activity");
  section.className = "card";
  section.replaceChildren(
    h("h2", {}, `Device activity: ${bundle.app_id} ${bundle.version_name}, last 14 days`),
    h("p", { id: "activity-summary" }, SERIES.map(([key, label]) => `${label} ${total(key)}`).join(" · ")),
    activityChart(data.daily));
  section.scrollIntoView({ block: "nearest" });
}

/** Grouped bars per day, drawn as SVG; the table below it carries the same numbers. */
function activityChart(daily) {
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, ...children) => {
    const el = document.createElementNS(svgNs, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    el.append(...children);
    return el;
  };
  const width = 700, height = 220, pad = 28, slot = (width - pad) / daily.length;
  const max = Math.max(1, ...daily.flatMap((d) => SERIES.map(([key]) => d[key])));
  const bars = daily.flatMap((d, i) => SERIES.map(([key, label, color], j) => {
    const h2 = ((height - pad) * d[key]) / max;
    return svg("rect", { x: pad + i * slot + j * (slot / 4) + slot / 8, y: height - pad - h2, width: slot / 4 - 1, height: h2, fill: color },
      svg("title", {}, `${d.day}: ${d[key]} ${label.toLowerCase()}`));
  }));
  const labels = daily.filter((_, i) => i % 2 === 0).map((d) => {
    const i = daily.indexOf(d);
    return svg("text", { x: pad + i * slot + slot / 2, y: height - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6676" }, d.day.slice(5));
  });
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", width: "100%", "aria-label": "Downloads, installs and failures per day" },
    svg("text", { x: 2, y: 12, "font-size": 11, fill: "#5b6676" }, String(max)), ...bars, ...labels);
  const legend = h("p", { class: "legend" }, SERIES.map(([key, label]) => h("span", { class: `legend-${key}` }, "■ " + label)));
  return h("div", {}, chart, legend);
}

function uploadForm() {
  const error = h("p", { class: "error", id: "upload-error", role: "alert" });
  const progress = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const appId = h("input", { id: "upload-app-id", placeholder: "com.example.app", required: true });
  const version = h("input", { id: "upload-version", placeholder: "1.0.1", required: true });
  const description = h("input", { id: "upload-description", placeholder: "What changed" });
  const file = h("input", { id: "upload-file", type: "file", accept: ".zip,application/zip", required: true });
  const drop = h("div", { class: "drop", id: "drop-zone" }, "…or drop the zip here");
  const chosen = h("span", { class: "muted" });
  let dropped = null;
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    dropped = e.dataTransfer.files[0] || null;
    chosen.textContent = dropped ? `Selected: ${dropped.name}` : "";
    file.required = !dropped;
  });
  const form = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      const blob = dropped || file.files[0];
      if (!blob) { error.textContent = "Choose the zip of your web build."; return; }
      const data = new FormData();
      data.append("app_id", appId.value.trim());
      data.append("version_name", version.value.trim());
      data.append("description", description.value);
      data.append("bundle", blob);
      // XMLHttpRequest reports upload progress; fetch does not.
      const request = new XMLHttpRequest();
      request.open("POST", "/api/v1/bundles.upload");
      request.setRequestHeader("x-api-key", sessionStorage.getItem(KEY) || "");
      request.upload.addEventListener("progress", (p) => { if (p.lengthComputable) progress.value = (100 * p.loaded) / p.total; });
      request.addEventListener("load", () => {
        progress.hidden = true;
        let body = {};
        try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status === 401) { sessionStorage.removeItem(KEY); showLogin("Your API key was refused; log in again."); return; }
        if (request.status !== 200) { error.textContent = body.error || `Upload failed (HTTP ${request.status})`; return; }
        toast(`Uploaded ${body.bundle.version_name}`);
        route();
      });
      request.addEventListener("error", () => { progress.hidden = true; error.textContent = "The upload was interrupted (network error)."; });
      error.textContent = "";
      progress.value = 0;
      progress.hidden = false;
      request.send(data);
    },
  },
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "upload-app-id" }, "App id"), appId),
    h("div", {}, h("label", { for: "upload-version" }, "Version name"), version),
    h("div", {}, h("label", { for: "upload-description" }, "Description"), description)),
  h("label", { for: "upload-file" }, "Bundle zip"), file, drop, chosen,
  h("p", {}, h("button", { type: "submit", id: "upload" }, "Upload")), progress, error);
  return h("section", { class: "card" }, h("h2", {}, "Upload a bundle"), form);
}

// ---- routing ------------------------------------------------------------------------------

async function route() {
  if (!sessionStorage.getItem(KEY)) return showLogin();
  document.getElementById("nav").hidden = false;
  const page = location.hash.startsWith("#/bundles") ? "bundles" : "releases";
  for (const name of ["releases", "bundles"]) {
    document.getElementById(`nav-${name}`).toggleAttribute("aria-current", name === page);
    if (name === page) document.getElementById(`nav-${name}`).setAttribute("aria-current", "page");
  }
  await attempt(() => (page === "bundles" ? showBundles() : showReleases()));
  main.focus({ preventScroll: true });
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  showLogin("Logged out.");
});
window.addEventListener("hashchange", route);
route();
