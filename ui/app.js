// capgo-server web UI: plain JavaScript, no build step. Talks to the management API with the
// credential kept in this tab's sessionStorage: an API key, or an OIDC access token obtained
// with Authorization Code + PKCE. Errors from the server are shown as they come.
"use strict";

// Uncaught errors are kept where the end-to-end test can read them.
window.__capgoErrors = [];
window.addEventListener("error", (e) => window.__capgoErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__capgoErrors.push(String(e.reason)));
window.addEventListener("securitypolicyviolation", (e) => window.__capgoErrors.push(`CSP blocked ${e.violatedDirective}`));

const CREDENTIAL = "capgo.credential";
const PKCE = "capgo.pkce";
const main = document.getElementById("main");

/** The stored credential: {kind: "key" | "bearer", value}, or null. */
function credential() {
  try { return JSON.parse(sessionStorage.getItem(CREDENTIAL)); } catch (_) { return null; }
}

function authHeaders() {
  const c = credential();
  if (!c) return {};
  return c.kind === "bearer" ? { authorization: `Bearer ${c.value}` } : { "x-api-key": c.value };
}

function signOut(message) {
  sessionStorage.removeItem(CREDENTIAL);
  showLogin(message);
}

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

/** Toasts shown at once, newest last: older ones make room so controls stay visible. */
const MAX_TOASTS = 3;

function toast(message) {
  const box = h("div", {}, message);
  const shelf = document.getElementById("toast");
  while (shelf.children.length >= MAX_TOASTS) shelf.firstChild.remove();
  shelf.append(box);
  setTimeout(() => box.remove(), 5000);
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = authHeaders();
  if (body && !(body instanceof FormData)) headers["content-type"] = "application/json";
  const response = await fetch("/api/v1/" + path, {
    method, headers, body: body && !(body instanceof FormData) ? JSON.stringify(body) : body,
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(`The server refused the credential: ${data.error || "HTTP 401"}.`);
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

/** Where the focus is inside `container`, as CSS selectors that find the same control once it
 * is drawn again (its id, else its data-* attributes), then the focusable part (tabindex) that
 * holds it; null when the focus is elsewhere. */
function focusMark(container) {
  const focused = document.activeElement;
  if (!focused || focused === container || !container.contains(focused)) return null;
  const selectorOf = (el) => el.id ? `#${CSS.escape(el.id)}` : [...el.attributes].filter((a) => a.name.startsWith("data-"))
    .map((a) => `[${a.name}="${CSS.escape(a.value)}"]`).join("");
  const region = focused.parentElement.closest("[tabindex]");
  return [selectorOf(focused), region && container.contains(region) ? selectorOf(region) : ""].filter(Boolean);
}

/** Puts the focus back where `mark` says, unless it is still (or again) inside `container`. */
function focusBack(container, mark) {
  if (!mark || (document.activeElement !== document.body && container.contains(document.activeElement))) return;
  const again = mark.map((css) => container.querySelector(css)).find(Boolean);
  if (again) again.focus({ preventScroll: true });
}

/** Redraws `container` with `draw`, keeping the focus where it was: a keyboard user is not
 * thrown back to the top of the page when it redraws on its own. */
function keepingFocus(container, draw) {
  const mark = focusMark(container);
  draw();
  focusBack(container, mark);
}

// ---- login --------------------------------------------------------------------------------

function showLogin(message) {
  shown = { page: null, reload: null };
  document.getElementById("nav").hidden = true;
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message || "");
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(CREDENTIAL, JSON.stringify({ kind: "key", value: key.value.trim() }));
      const ok = await attempt(() => api("GET", "whoami"), error);
      if (ok) location.hash = "#/overview", route();
    },
  },
    h("label", { for: "api-key" }, "Management API key"), key,
    h("p", {}, h("button", { type: "submit", id: "login" }, "Log in")));
  const sso = h("section", { class: "card", id: "sso", hidden: true });
  main.replaceChildren(h("h1", {}, "Log in"), sso, h("section", { class: "card" }, form), error);
  fetch("/apipublic/v1/oauth2.config").then((r) => r.json()).then((config) => {
    if (!config.enabled) return;
    sso.hidden = false;
    if (config.error || !config.authorization_endpoint || !config.token_endpoint) {
      sso.replaceChildren(h("p", { class: "error" }, `Single sign-on is configured but unavailable: ${config.error || "the issuer publishes no authorization or token endpoint"}`));
    } else {
      sso.replaceChildren(h("button", { type: "button", id: "sso-login", onclick: () => startSignIn(config).catch((e) => { error.textContent = e.message; }) },
        "Sign in with single sign-on"), h("p", { class: "muted" }, `Identity provider: ${config.issuer}`));
    }
  }).catch(() => {});
  key.focus();
}

const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
/** The seed's callback path: identity providers set up for the seed accept it unchanged. */
const redirectUri = () => `${location.origin}/ui/login/oauth-callback`;

/** Authorization Code with PKCE (RFC 7636): off to the identity provider and back. */
async function startSignIn(config) {
  if (!window.crypto || !crypto.subtle) throw new Error("Single sign-on needs the UI served over HTTPS (or from localhost).");
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = base64url(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PKCE, JSON.stringify({ verifier, state, token_endpoint: config.token_endpoint, client_id: config.client_id }));
  const url = new URL(config.authorization_endpoint);
  for (const [k, v] of Object.entries({ response_type: "code", client_id: config.client_id, redirect_uri: redirectUri(),
    scope: config.scope, state, code_challenge: challenge, code_challenge_method: "S256" })) url.searchParams.set(k, v);
  location.assign(url.toString());
}

/** Back from the identity provider with ?code=…&state=…: exchanges the code for a token. */
async function finishSignIn(params) {
  const pending = JSON.parse(sessionStorage.getItem(PKCE) || "null");
  sessionStorage.removeItem(PKCE);
  history.replaceState(null, "", "/ui/#/overview");
  if (params.get("error")) throw new Error(`The identity provider refused the sign-in: ${params.get("error_description") || params.get("error")}`);
  if (!pending || pending.state !== params.get("state")) throw new Error("The sign-in answer does not match this tab's request; try again.");
  const response = await fetch(pending.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code: params.get("code"), redirect_uri: redirectUri(),
      client_id: pending.client_id, code_verifier: pending.verifier }),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok || !data.access_token) throw new Error(`The identity provider did not issue a token: ${data.error_description || data.error || `HTTP ${response.status}`}`);
  sessionStorage.setItem(CREDENTIAL, JSON.stringify({ kind: "bearer", value: data.access_token }));
}

// ---- releases -----------------------------------------------------------------------------

/** What a channel serves, in words: the server decides, the page only says it. */
const BECAUSE = { assigned: "", production: " (follows production)", builtin: " (builtin)" };

function showReleases(admin) {
  const form = createReleaseForm();
  const groups = h("div", { id: "release-groups" });
  const view = [h("h1", {}, "Releases"), form.section, groups];
  // Polls and changes can overlap: only the latest load draws, and only what changed, so a
  // poll neither flickers the page nor closes a list someone has open.
  let loads = 0;
  let drawn = "";
  const reload = async () => {
    const mine = ++loads;
    const [releases, bundles] = await Promise.all([api("GET", "releases.list"), api("GET", "bundles.list")]);
    if (mine !== loads) return;
    const snapshot = JSON.stringify([releases.data, bundles.data]);
    if (snapshot !== drawn) {
      drawn = snapshot;
      form.setBundles(bundles.data);
      keepingFocus(groups, () => groups.replaceChildren(...releaseGroups(releases.data, bundles.data, admin)));
    }
    if (buildToRegister) {
      form.prefill(buildToRegister, bundles.data);
      buildToRegister = null;
    }
    pollWhile(releases.data.some((r) => Object.values(r.rollouts).some(isActive)), reload);
  };
  return { view, reload };
}

/** The releases table of each app and platform. */
function releaseGroups(releases, bundles, admin) {
  const byId = Object.fromEntries(bundles.map((b) => [b.id, b]));
  const name = (id) => (byId[id] ? byId[id].version_name : id);
  const grouped = {};
  for (const r of releases) (grouped[`${r.app_id} · ${r.platform}`] ||= []).push(r);
  const content = [];
  if (!releases.length) content.push(h("p", { class: "muted" }, "No releases yet: register a store build above."));
  for (const [group, items] of Object.entries(grouped).sort()) {
    content.push(h("h2", {}, group), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Native version", "Builtin", "Channels", "Released", "Actions"].map((t) => h("th", {}, t)))),
      h("tbody", {}, items.flatMap((r) => releaseRows(r, bundles, name, admin))))));
  }
  return content;
}

/** A release's row, and below it a row with the staged rollouts of its channels. */
function releaseRows(r, bundles, name, admin) {
  const owned = r.owner ? h("span", { class: "badge", title: `Managed by the Kubernetes resource ${r.owner}: change it there` }, "Kubernetes") : null;
  const channelLine = ([channel, serving]) => {
    const key = `${r.id}:${channel}`;
    const rollout = r.rollouts[channel] && isActive(r.rollouts[channel]) ? r.rollouts[channel] : null;
    return h("div", { class: "channel" }, h("strong", {}, channel + ":"), " ", name(serving.bundle_id) + BECAUSE[serving.because],
      rollout ? h("span", { class: "badge", title: "Staged rollout: see below" }, `${formatPercent(rollout.percent)} on ${name(rollout.canary_bundle_id)}`) : null,
      // During a rollout the channel changes through it (the server refuses a direct change).
      r.owner || rollout ? null : h("button", { type: "button", class: "secondary", "data-promote": key, "data-channel-key": key, disabled: channelCalls.has(key),
        onclick: (e) => promoteDialog(r, channel, bundles, e.currentTarget) }, "Change"));
  };
  const row = h("tr", { "data-release": r.id },
    h("td", { "data-label": "Native version" }, `${r.version_name} (${r.version_code})`, " ", owned),
    h("td", { "data-label": "Builtin" }, name(r.builtin_bundle_id)),
    h("td", { "data-label": "Channels" }, Object.entries(r.serving).map(channelLine)),
    h("td", { "data-label": "Released" }, formatDate(r.release_date) || h("span", { class: "muted" }, "—"), " ",
      r.owner ? null : h("button", { type: "button", class: "link", "data-release-date": r.id, onclick: () => releaseDateDialog(r) }, "Edit")),
    h("td", { "data-label": "Actions" }, r.owner ? h("span", { class: "muted" }, `Read-only: managed by ${r.owner}`) : [
      h("button", { type: "button", class: "secondary", "data-add-channel": r.id, onclick: (e) => promoteDialog(r, "", bundles, e.currentTarget) }, "Add channel"), " ",
      h("button", { type: "button", class: "danger", onclick: () => deleteRelease(r) }, "Delete")]));
  const rollouts = Object.values(r.rollouts);
  if (!rollouts.length) return [row];
  return [row, h("tr", { class: "rollouts", "data-rollouts-of": r.id },
    h("td", { colspan: 5 }, rollouts.map((rollout) => rolloutPanel(r, rollout, name, admin))))];
}

/** A native build the Channels page asked to register ({platform, app_id, version_name,
 * version_code}): the Releases page fills its form with it once, when its data has loaded. */
let buildToRegister = null;

/** The "register a store build" form; `setBundles` refreshes its bundle choices in place, and
 * `prefill` fills it for one build so that one press on "Create release" registers it. */
function createReleaseForm() {
  const error = h("p", { class: "error", role: "alert" });
  const note = h("p", { id: "new-release-note", role: "status" });
  const field = (id, label, input) => h("div", {}, h("label", { for: id }, label), input);
  const platform = h("select", { id: "new-platform" }, ["android", "ios", "electron"].map((p) => h("option", { value: p }, p)));
  const appId = h("input", { id: "new-app-id", placeholder: "com.example.app", required: true });
  const version = h("input", { id: "new-version-name", placeholder: "1.0.0", required: true });
  const code = h("input", { id: "new-version-code", placeholder: "10", required: true });
  const builtin = h("select", { id: "new-builtin", required: true });
  const submit = h("button", { type: "submit", id: "create-release" }, "Create release");
  const setBundles = (bundles) => {
    const chosen = builtin.value;
    builtin.replaceChildren(h("option", { value: "" }, "Choose the bundle inside the store build"),
      ...bundles.map((b) => h("option", { value: b.id }, `${b.app_id} ${b.version_name}`)));
    builtin.value = bundles.some((b) => b.id === chosen) ? chosen : "";
  };
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const done = await attempt(() => api("POST", "releases.create", {
        platform: platform.value, app_id: appId.value.trim(), version_name: version.value.trim(),
        version_code: code.value.trim(), builtin_bundle_id: builtin.value,
      }), error);
      if (done) { toast("Release created"); form.reset(); note.textContent = ""; refresh(); }
    },
  }, h("div", { class: "row" }, field("new-platform", "Platform", platform), field("new-app-id", "App id", appId),
    field("new-version-name", "Native version", version), field("new-version-code", "Build number", code),
    field("new-builtin", "Builtin bundle", builtin)),
  note, h("p", {}, submit), error);
  /** Fills the form for `build`, with the app's newest bundle as the builtin one. */
  const prefill = (build, bundles) => {
    platform.value = build.platform;
    appId.value = build.app_id;
    version.value = build.version_name;
    code.value = build.version_code;
    const newest = bundles.find((b) => b.app_id === build.app_id);
    builtin.value = newest ? newest.id : "";
    note.textContent = newest
      ? `Registering ${build.platform} ${build.app_id} ${build.version_name} (${build.version_code}) with ${newest.version_name}, the app's newest bundle, as the bundle inside it: change it if the build ships another one, then press Create release.`
      : `${build.app_id} has no bundle yet: upload the one inside this build on the Bundles page first.`;
    // After the page is on screen (showing it moves the focus to the page).
    setTimeout(() => { submit.scrollIntoView({ block: "center" }); submit.focus(); }, 0);
  };
  return { section: h("section", { class: "card" }, h("h2", {}, "Register a store build"), form), setBundles, prefill };
}

/** Chooses what a channel serves: at once (releases.set-active), or as a staged rollout that
 * moves devices over step by step while they stay healthy (rollouts.start). `opener` is the
 * button that opened it, disabled while the call runs. */
async function promoteDialog(release, channel, bundles, opener) {
  const dialog = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  const candidates = bundles.filter((b) => b.app_id === release.app_id);
  const versionOf = (id) => (candidates.find((b) => b.id === id) || { version_name: id }).version_name;
  const channelInput = h("input", { id: "promote-channel", value: channel || "", placeholder: "production", required: true });
  const bundle = h("select", { id: "promote-bundle" }, candidates.map((b) =>
    h("option", { value: b.id }, b.id === release.builtin_bundle_id ? `${b.version_name} (builtin: roll back)` : b.version_name)));
  const staged = h("input", { type: "checkbox", id: "promote-staged" });
  const plan = rolloutPlanFields();
  const explain = h("p", { id: "promote-explain" });
  const confirm = h("button", { value: "ok", id: "promote-confirm", type: "submit" }, "Confirm");
  const channelName = () => channelInput.value.trim() || "production";
  // A channel without a bundle of its own follows production.
  const servedNow = () => versionOf((release.serving[channelName()] || release.serving.production).bundle_id);
  const describe = () => {
    const chosen = candidates.find((b) => b.id === bundle.value);
    const who = `Devices of ${release.platform} ${release.app_id} ${release.version_name} (${release.version_code}) on channel "${channelName()}"`;
    confirm.textContent = staged.checked ? "Start rollout" : "Confirm";
    if (!chosen) explain.textContent = "";
    else if (staged.checked) explain.textContent = `${who} move from ${servedNow()} to ${chosen.version_name} ${plan.describe()}; past the gate every device goes back to ${servedNow()}.`;
    else if (chosen.id === release.builtin_bundle_id) explain.textContent = `${who} go back to the bundle inside the app (${chosen.version_name}) at their next check.`;
    else explain.textContent = `${who} will download ${chosen.version_name} at their next check.`;
  };
  staged.addEventListener("change", () => { plan.show(staged.checked); describe(); });
  for (const input of [bundle, channelInput, plan.fieldset]) input.addEventListener(input === bundle ? "change" : "input", describe);
  describe();
  form.replaceChildren(h("h2", {}, "Choose what a channel serves"),
    h("label", { for: "promote-channel" }, "Channel"), channelInput,
    h("label", { for: "promote-bundle" }, "Bundle"), bundle,
    h("label", { class: "check", for: "promote-staged" }, staged, "Staged rollout: a share of devices at a time, stopped if they fail"),
    plan.fieldset, explain,
    h("menu", {}, h("button", { value: "cancel", class: "secondary", type: "submit", formnovalidate: true }, "Cancel"), confirm));
  dialog.returnValue = "";
  dialog.showModal();
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "ok") return;
    const target = { release_id: release.id, bundle_id: bundle.value, channel: channelName() };
    const startsRollout = staged.checked;
    if (opener) opener.disabled = true;
    const done = await changingChannel(`${release.id}:${target.channel}`, () => attempt(() => startsRollout
      ? api("POST", "rollouts.start", { ...target, ...plan.request() })
      : api("POST", "releases.set-active", target)));
    if (opener) opener.disabled = false;
    if (done) {
      toast(startsRollout ? `Rollout of ${versionOf(target.bundle_id)} started on ${target.channel}` : "Channel updated");
      refresh();
    }
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
      refresh();
    }
  }, { once: true });
}

async function deleteRelease(release) {
  const confirmed = await confirmDialog("Delete this release?",
    `Devices of ${release.platform} ${release.app_id} ${release.version_name} (${release.version_code}) will stop getting updates.`, "Delete", true);
  if (!confirmed) return;
  if (await attempt(() => api("POST", "releases.delete", { release_id: release.id }))) { toast("Release deleted"); refresh(); }
}

// ---- staged rollouts ----------------------------------------------------------------------

/** A rollout's phase, in words. */
const ROLLOUT_PHASES = { progressing: "Progressing", paused: "Paused", rolled_back: "Rolled back", done: "Done" };

/** What the start form shows and sends unless changed: the server's defaults (rollouts.start). */
const ROLLOUT_DEFAULTS = { steps: "10, 50, 100", interval: "10m", failurePercent: 5, minDevices: 10 };

/** How often the Releases page looks again while a rollout there is progressing or paused. */
const ROLLOUT_POLL_MS = 2000;

/** Progressing or paused: part of the channel's devices get the canary. */
const isActive = (rollout) => rollout.phase === "progressing" || rollout.phase === "paused";

/** 12.5 → "12.5%", 50 → "50%". */
const formatPercent = (percent) => `${Number(percent.toFixed(2))}%`;

/** Steps as typed: percentages separated by commas or spaces. */
const parseSteps = (text) => text.split(/[\s,;]+/).filter(Boolean).map(Number);

let pollTimer = null;

/** Loads the page again in a few seconds if `active`, while `reload`'s page is the one shown
 * and the tab is visible (a hidden tab polls again when it is shown). */
function pollWhile(active, reload) {
  clearTimeout(pollTimer);
  if (!active) return;
  const tick = () => {
    if (shown.reload !== reload) return;
    if (document.hidden) document.addEventListener("visibilitychange", tick, { once: true });
    else refresh();
  };
  pollTimer = setTimeout(tick, ROLLOUT_POLL_MS);
}

/** Calls that change a release's channel, by "release id:channel": the buttons of that channel
 * (marked data-channel-key) stay disabled until the call is answered, redrawn ones included. */
const channelCalls = new Set();

async function changingChannel(key, call) {
  const buttons = (disabled) => {
    for (const b of document.querySelectorAll(`[data-channel-key="${CSS.escape(key)}"]`)) b.disabled = disabled;
  };
  // A focused button loses the focus when it is disabled: it comes back afterwards.
  const mark = focusMark(main);
  channelCalls.add(key);
  buttons(true);
  try {
    return await call();
  } finally {
    channelCalls.delete(key);
    buttons(false);
    focusBack(main, mark);
  }
}

/** The plan fields of the start form, with the defaults filled in; hidden and disabled (so not
 * validated) until "Staged rollout" is ticked. */
function rolloutPlanFields() {
  const field = (id, label, input, hint) => h("div", {}, h("label", { for: id }, label), input,
    hint ? h("small", { class: "muted", id: `${id}-hint` }, hint) : null);
  const steps = h("input", { id: "rollout-steps", value: ROLLOUT_DEFAULTS.steps, required: true, "aria-describedby": "rollout-steps-hint",
    pattern: "\\s*\\d+(\\.\\d+)?([\\s,;]+\\d+(\\.\\d+)?)*\\s*", title: "Percentages separated by commas, growing, the last one 100" });
  const interval = h("input", { id: "rollout-interval", value: ROLLOUT_DEFAULTS.interval, required: true, "aria-describedby": "rollout-interval-hint",
    pattern: "\\s*(\\d+(\\.\\d+)?(ms|s|m|h))+\\s*", title: "A duration such as 30s, 10m or 1h30m" });
  const gate = h("input", { id: "rollout-gate", type: "number", min: 0, max: 100, step: "any", value: ROLLOUT_DEFAULTS.failurePercent, required: true });
  const minDevices = h("input", { id: "rollout-min-devices", type: "number", min: 0, step: 1, value: ROLLOUT_DEFAULTS.minDevices, required: true,
    "aria-describedby": "rollout-min-devices-hint" });
  const fieldset = h("fieldset", { id: "rollout-plan", hidden: true, disabled: true }, h("legend", {}, "Rollout plan"),
    h("div", { class: "row" },
      field("rollout-steps", "Steps (% of devices)", steps, "The last one is 100."),
      field("rollout-interval", "Time at each step", interval, "At least 1s."),
      field("rollout-gate", "Failure gate (%)", gate),
      field("rollout-min-devices", "Devices before a step", minDevices, "Canary devices that must report first.")));
  return {
    fieldset,
    show: (on) => { fieldset.hidden = !on; fieldset.disabled = !on; },
    /** The plan in words, for the confirmation. */
    describe: () => `in steps of ${parseSteps(steps.value).map(formatPercent).join(" → ")} of devices, one step every ${interval.value.trim()}` +
      ` while at most ${gate.value}% of the devices that report fail (and at least ${minDevices.value} have reported)`,
    /** The plan as rollouts.start takes it. */
    request: () => ({ steps: parseSteps(steps.value), interval: interval.value.trim(),
      max_failure_rate: Number(gate.value) / 100, min_devices: Number(minDevices.value) }),
  };
}

/** One channel's staged rollout: where it is, how healthy the canary is, and (while it runs)
 * the hand controls. A release a Kubernetes resource manages shows them too: pausing or
 * aborting is an operational move, allowed to anyone who may manage releases. */
function rolloutPanel(release, rollout, name, admin) {
  const stable = name(rollout.stable_bundle_id);
  const canary = name(rollout.canary_bundle_id);
  const headingId = `rollout-${rollout.id}-title`;
  return h("section", { class: "rollout", id: `rollout-${rollout.id}`, "data-rollout": `${release.id}:${rollout.channel}`,
    "data-phase": rollout.phase, tabindex: -1, "aria-labelledby": headingId },
  h("h3", { id: headingId }, `Staged rollout of ${canary} on ${rollout.channel} `,
    h("span", { class: "badge phase" }, ROLLOUT_PHASES[rollout.phase] || rollout.phase)),
  rolloutProgress(rollout, canary),
  rolloutHealth(rollout, canary),
  rolloutOutlook(rollout, stable, canary),
  h("p", { class: "muted" }, `Started by ${rollout.started_by} on ${formatDate(rollout.started_at)}, from ${stable}; ` +
    `every ${rollout.interval} while healthy, health over the last ${rollout.window}.`,
  rollout.owner ? ` Managed by ${rollout.owner}: its plan changes there.` : ""),
  isActive(rollout) ? rolloutControls(release, rollout, stable, canary, admin) : null);
}

/** The share of devices on the canary as a bar with the steps marked, and the steps listed. */
function rolloutProgress(rollout, canary) {
  const last = rollout.steps.length - 1;
  const fill = h("div", { class: "rollout-fill" });
  fill.style.width = `${rollout.percent}%`;
  const ticks = rollout.steps.slice(0, last).map((percent) => {
    const tick = h("span", { class: "rollout-tick" });
    tick.style.left = `${percent}%`;
    return tick;
  });
  const where = rollout.phase === "rolled_back" ? `stopped at step ${rollout.step + 1} of ${rollout.steps.length}`
    : rollout.phase === "done" ? "every step done" : `step ${rollout.step + 1} of ${rollout.steps.length}`;
  const summary = `${formatPercent(rollout.percent)} of devices get ${canary} (${where})`;
  return h("div", {},
    h("p", { class: "rollout-share" }, summary),
    h("div", { class: "rollout-bar", role: "progressbar", "aria-label": `Devices on ${canary}`, "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": rollout.percent, "aria-valuetext": summary }, fill, ticks),
    h("ol", { class: "rollout-steps", "aria-label": "Steps" }, rollout.steps.map((percent, i) =>
      h("li", { class: i <= rollout.step && rollout.phase !== "rolled_back" ? "reached" : "",
        "aria-current": isActive(rollout) && i === rollout.step ? "step" : false }, formatPercent(percent)))));
}

/** Devices that reported on the canary against the gate; red once it is past the gate. */
function rolloutHealth(rollout, canary) {
  const needed = Math.max(1, rollout.min_devices);
  const judged = rollout.devices >= needed;
  const failing = judged && rollout.failure_rate > rollout.max_failure_rate;
  const counts = `${rollout.devices} device(s) reported on ${canary}, ${rollout.failed} failed ` +
    `(${formatPercent(rollout.failure_rate * 100)}; the gate is ${formatPercent(rollout.max_failure_rate * 100)})`;
  return h("p", { class: failing ? "rollout-health error" : "rollout-health" },
    isActive(rollout) ? "Health: " : "Health when it ended: ", counts,
    judged || !isActive(rollout) ? "" : h("span", { class: "muted" }, ` · ${needed - rollout.devices} more must report before a step (at least ${rollout.min_devices})`));
}

/** What comes next, or how it ended. */
function rolloutOutlook(rollout, stable, canary) {
  const channel = `channel ${rollout.channel}`;
  switch (rollout.phase) {
    case "progressing": {
      const next = rollout.step + 1 < rollout.steps.length
        ? `${formatPercent(rollout.steps[rollout.step + 1])} of devices get ${canary}`
        : `${canary} becomes the bundle of ${channel} for every device`;
      return h("p", { class: "rollout-next" }, `Next: ${next}, not before ${formatDate(rollout.next_step_at)}, ` +
        `once at least ${Math.max(1, rollout.min_devices)} device(s) have reported and while at most ${formatPercent(rollout.max_failure_rate * 100)} fail.`);
    }
    case "paused":
      return h("p", { class: "rollout-next" }, `Paused: no step is taken and the gate is not checked until it is resumed; ` +
        `the ${formatPercent(rollout.percent)} of devices on ${canary} keep it.`);
    case "rolled_back":
      return h("p", { class: "rollout-next" }, `Rolled back on ${formatDate(rollout.finished_at)}: `,
        h("strong", { class: "error", "data-rollout-reason": "" }, rollout.reason || "no reason recorded"),
        `. Every device on ${channel} gets ${stable}.`);
    default:
      return h("p", { class: "rollout-next" }, `Done on ${formatDate(rollout.finished_at)}: ${channel} serves ${canary} to every device.`);
  }
}

/** What each hand move does, as its confirmation says it. */
const ROLLOUT_MOVES = {
  pause: (on, stable, canary, r) => ({ title: `Pause the rollout of ${canary}?`, label: "Pause", done: "Rollout paused",
    text: `No step is taken, and the failure gate is not checked, until it is resumed. The ${formatPercent(r.percent)} of devices on ${on} that get ${canary} keep it; the others stay on ${stable}.` }),
  resume: (on, stable, canary, r) => ({ title: `Resume the rollout of ${canary}?`, label: "Resume", done: "Rollout resumed",
    text: `It goes on at ${formatPercent(r.percent)} of devices on ${on}: this step runs its whole ${r.interval} again, healthy, before the next one.` }),
  abort: (on, stable, canary) => ({ title: `Abort the rollout of ${canary}?`, label: "Abort rollout", danger: true, done: `Rollout aborted: back to ${stable}`,
    text: `Every device on ${on} goes back to bundle ${stable} at its next check. The rollout ends; start a new one to try ${canary} again.` }),
  promote: (on, stable, canary) => ({ title: `Promote ${canary} now?`, label: "Promote now", danger: true, done: `${canary} promoted to every device`,
    text: `Every device on ${on} gets bundle ${canary} at its next check, whatever its health so far, and ${canary} becomes the channel's bundle. The rollout ends.` }),
};

function rolloutControls(release, rollout, stable, canary, admin) {
  if (!admin) return h("p", { class: "muted" }, "Pausing, resuming, aborting or promoting a rollout needs a full-access token.");
  const key = `${release.id}:${rollout.channel}`;
  const button = (action, label, style) => h("button", { type: "button", class: style, "data-rollout-action": `${key}:${action}`,
    "data-channel-key": key, disabled: channelCalls.has(key), onclick: () => moveRollout(release, rollout, action, stable, canary) }, label);
  return h("p", { class: "rollout-controls" },
    rollout.phase === "paused" ? button("resume", "Resume", "") : button("pause", "Pause", "secondary"), " ",
    button("promote", "Promote now", "secondary"), " ",
    button("abort", "Abort", "danger"));
}

/** Pauses, resumes, aborts or promotes a rollout once its confirmation is accepted. */
async function moveRollout(release, rollout, action, stable, canary) {
  const on = `channel ${rollout.channel} of ${release.platform} ${release.version_name} (${release.version_code})`;
  const move = ROLLOUT_MOVES[action](on, stable, canary, rollout);
  if (!(await confirmDialog(move.title, move.text, move.label, move.danger))) return;
  await changingChannel(`${release.id}:${rollout.channel}`, async () => {
    const done = await attempt(() => api("POST", `rollouts.${action}`, { release_id: release.id, channel: rollout.channel }));
    if (done) toast(move.done);
    // After a refusal too: the rollout may have moved on by itself meanwhile.
    await refresh();
  });
}

// ---- bundles ------------------------------------------------------------------------------

function showBundles() {
  const rows = h("tbody", { id: "bundle-rows" });
  const empty = h("p", { class: "muted", hidden: true }, "No bundles yet: upload the zip of your web build above.");
  const view = [h("h1", {}, "Bundles"), uploadForm(),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Version", "Size", "Checksum", "Created", "Used by", "Devices"].map((t) => h("th", {}, t)))),
      rows)),
    h("section", { id: "activity", "aria-live": "polite" }), empty];
  return { view, reload: async () => {
    const bundles = await api("GET", "bundles.list");
    const users = (b) => b.used_by.map((u) => `${u.platform} ${u.version_name} (${u.version_code})` +
      (u.serving.length ? `: ${u.serving.join(", ")}` : u.builtin ? ": builtin" : ""));
    rows.replaceChildren(...bundles.data.map((b) => h("tr", { "data-bundle": b.id },
      h("td", { "data-label": "Version" }, h("strong", {}, b.version_name), " ", b.owner ? h("span", { class: "badge", title: `Managed by ${b.owner}` }, "Kubernetes") : null,
        h("div", { class: "muted" }, b.app_id)),
      h("td", { "data-label": "Size" }, formatSize(b.size)),
      h("td", { "data-label": "Checksum" }, h("code", { title: b.sha256 }, b.sha256.slice(0, 12) + "…"), b.encrypted ? ` (encrypted${b.key_id ? `, key ${b.key_id}` : ""})` : ""),
      h("td", { "data-label": "Created" }, formatDate(b.created_at)),
      h("td", { "data-label": "Used by" }, users(b).join("; ") || h("span", { class: "muted" }, "no release")),
      h("td", { "data-label": "Devices" }, h("button", { type: "button", class: "secondary", "data-activity": b.id,
        onclick: () => attempt(() => showActivity(b)) }, "Activity")))));
    empty.hidden = bundles.data.length > 0;
  } };
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

/** An SVG element (the charts are drawn with these). */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** Grouped bars per day, drawn as SVG; the table below it carries the same numbers. */
function activityChart(daily) {
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
      for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
      request.upload.addEventListener("progress", (p) => { if (p.lengthComputable) progress.value = (100 * p.loaded) / p.total; });
      request.addEventListener("load", () => {
        progress.hidden = true;
        let body = {};
        try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status === 401) { signOut(`The server refused the credential: ${body.error || "HTTP 401"}.`); return; }
        if (request.status !== 200) { error.textContent = body.error || `Upload failed (HTTP ${request.status})`; return; }
        toast(`Uploaded ${body.bundle.version_name}`);
        if (body.note) toast(body.note);
        form.reset();
        dropped = null;
        chosen.textContent = "";
        file.required = true;
        refresh();
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

// ---- channels -----------------------------------------------------------------------------

/** A channel's yes/no settings, grouped and worded as the form shows them. */
const CHANNEL_CHECKS = [
  ["Platforms it serves", [["allow_ios", "iOS"], ["allow_android", "Android"], ["allow_electron", "Electron"]]],
  ["Devices it serves", [["allow_device", "Physical devices"], ["allow_emulator", "Emulators"]]],
  ["Builds it serves", [["allow_prod_build", "Store (production) builds"], ["allow_dev_build", "Development builds"]]],
  ["Who may choose it", [["allow_device_self_set", "Devices may choose this channel themselves"]]],
];

/** What `update_policy` lets a channel offer, against the device's native version. */
const UPDATE_POLICIES = [
  ["none", "Any bundle"],
  ["major", "Not above the native build's major version"],
  ["minor", "Only the native build's major.minor versions"],
  ["patch", "Only the native build's major.minor.patch version"],
  ["version_number", "Only bundles whose minimum native version the device has"],
];

/** Who put a device on its channel, in words. */
function overrideSource(o) {
  if (o.source === "api") return "this page or the API";
  if (o.source === "device") return "the device itself (setChannel)";
  return `Kubernetes ${o.source}`;
}

/** Overrides a Channel resource made can only be changed through it. */
const managedByResource = (o) => o.source !== "api" && o.source !== "device";

/** Device ids typed one per line, or separated by commas or spaces. */
const deviceIds = (text) => text.split(/[\s,;]+/).filter(Boolean);

/** One channel's settings as a form; read-only when a Channel resource manages them or the
 * token may not change them. `onSaved` gets the channel as the server answers it. */
function channelCard(channel, admin, onSaved) {
  const name = channel.channel;
  const id = (setting) => `channel-${name}-${setting}`;
  const error = h("p", { class: "error", role: "alert" });
  const policy = h("select", { id: id("update_policy"), name: "update_policy" },
    UPDATE_POLICIES.map(([value, label]) => h("option", { value }, label)));
  policy.value = channel.settings.update_policy;
  const readOnly = Boolean(channel.owner) || !admin;
  const counts = [`${channel.forced_devices} device(s) put on it`, `${channel.chosen_by_devices} chose it themselves`,
    channel.id === null ? null : `id ${channel.id}`, channel.configured ? null : "default settings"].filter(Boolean).join(" · ");
  const form = h("form", {
    "data-channel-form": name,
    onsubmit: async (e) => {
      e.preventDefault();
      const change = { app_id: channel.app_id, channel: name, update_policy: policy.value };
      for (const [, settings] of CHANNEL_CHECKS) for (const [setting] of settings) change[setting] = form.elements[setting].checked;
      change.block_under_native = form.elements.block_under_native.checked;
      const saved = await attempt(() => api("POST", "channels.update", change), error);
      if (saved) { toast(`Channel ${name} saved`); onSaved(saved.channel); }
    },
  },
  h("fieldset", { class: "settings", disabled: readOnly },
    h("legend", { class: "visually-hidden" }, `Settings of channel ${name}`),
    h("div", { class: "settings-grid" },
      CHANNEL_CHECKS.map(([legend, settings]) => h("fieldset", {}, h("legend", {}, legend),
        settings.map(([setting, label]) => h("label", { class: "check", for: id(setting) },
          h("input", { type: "checkbox", id: id(setting), name: setting, checked: channel.settings[setting] }), label)))),
      h("fieldset", {}, h("legend", {}, "Versions it offers"),
        h("label", { for: id("update_policy") }, "Update policy"), policy,
        h("label", { class: "check", for: id("block_under_native") },
          h("input", { type: "checkbox", id: id("block_under_native"), name: "block_under_native", checked: channel.settings.block_under_native }),
          "Never a bundle below the native version"))),
    readOnly ? null : h("p", {}, h("button", { type: "submit" }, "Save"))),
  channel.owner ? h("p", { class: "muted", "data-managed": name }, `Read-only: managed by the Kubernetes resource ${channel.owner}; change it there.`)
    : !admin ? h("p", { class: "muted" }, "Read-only: changing settings needs a full-access token.") : null,
  error);
  return h("section", { class: "card", "data-channel": name },
    h("h3", {}, name, " ", channel.owner ? h("span", { class: "badge", title: `Managed by ${channel.owner}` }, "Kubernetes") : null),
    h("p", { class: "muted" }, counts), form);
}

function showChannels(admin) {
  let app = "";
  /** The cards on screen by channel, with the data each was drawn from: a card is redrawn
   * only when its channel changed, so unsaved edits in the others stay. */
  let cards = new Map();
  const appSelect = h("select", { id: "channels-app" });
  appSelect.addEventListener("change", () => { app = appSelect.value; cards = new Map(); refresh(); });
  const channelList = h("div", { id: "channel-list" });

  const newError = h("p", { class: "error", role: "alert" });
  const newName = h("input", { id: "new-channel-name", placeholder: "beta", required: true, maxlength: 64 });
  const newChannel = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const made = await attempt(() => api("POST", "channels.update", { app_id: app, channel: newName.value.trim() }), newError);
      if (made) { toast(`Channel ${made.channel.channel} added`); newChannel.reset(); refresh(); }
    },
  }, h("div", { class: "row compact" }, h("div", {}, h("label", { for: "new-channel-name" }, "Add a channel (to set it up before a release serves it)"), newName),
    h("div", { class: "row-action" }, h("button", { type: "submit", id: "new-channel" }, "Add channel"))), newError);

  const findError = h("p", { class: "error", role: "alert" });
  const query = h("input", { id: "device-query", placeholder: "device_id or custom_id", required: true, maxlength: 36 });
  const results = h("div", { id: "device-results", "aria-live": "polite" });
  const forceError = h("p", { class: "error", id: "force-error", role: "alert" });
  const forced = h("textarea", { id: "force-devices", rows: 3, required: true, placeholder: "one device id per line" });
  const forceChannel = h("select", { id: "force-channel", required: true });
  const findForm = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const found = await attempt(() => api("GET", `devices.find?app_id=${encodeURIComponent(app)}&q=${encodeURIComponent(query.value.trim())}`), findError);
      if (found) showFound(found.data);
    },
  }, h("div", { class: "row compact" }, h("div", {}, h("label", { for: "device-query" }, "Find a device by device_id or custom_id"), query),
    h("div", { class: "row-action" }, h("button", { type: "submit", id: "device-find", class: "secondary" }, "Find"))), findError, results);
  const showFound = (devices) => {
    results.replaceChildren(!devices.length ? h("p", { class: "muted" }, "No device of this app reported that id.")
      : h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Device", "Custom id", "Platform", "Bundle", "Last seen", "Channel", "Actions"].map((t) => h("th", {}, t)))),
        h("tbody", {}, devices.map((d) => h("tr", {},
          h("td", { "data-label": "Device" }, h("code", {}, d.device_id)),
          h("td", { "data-label": "Custom id" }, d.custom_id || h("span", { class: "muted" }, "—")),
          h("td", { "data-label": "Platform" }, d.platform || h("span", { class: "muted" }, "—")),
          h("td", { "data-label": "Bundle" }, d.version_name || h("span", { class: "muted" }, "—")),
          h("td", { "data-label": "Last seen" }, d.last_seen ? formatDate(d.last_seen) : h("span", { class: "muted" }, "never sent stats")),
          h("td", { "data-label": "Channel" }, d.override ? `${d.override.channel} (by ${overrideSource(d.override)})` : h("span", { class: "muted" }, "its own choice or the default")),
          h("td", { "data-label": "Actions" }, admin ? h("button", { type: "button", class: "secondary", "data-pick": d.device_id, onclick: () => {
            const ids = deviceIds(forced.value);
            if (!ids.includes(d.device_id)) forced.value = [...ids, d.device_id].join("\n");
            forced.focus();
          } }, "Add to the list below") : null)))))));
  };
  const forceForm = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const ids = deviceIds(forced.value);
      const done = await attempt(() => api("POST", "devices.set-channel", { app_id: app, channel: forceChannel.value, device_ids: ids }), forceError);
      if (done) { toast(done.message); forceForm.reset(); refresh(); }
    },
  }, h("div", { class: "row" },
    h("div", {}, h("label", { for: "force-devices" }, "Device ids (one per line, or separated by commas)"), forced),
    h("div", {}, h("label", { for: "force-channel" }, "Channel"), forceChannel)),
  h("p", {}, h("button", { type: "submit", id: "force-submit" }, "Put on channel")), forceError);
  const overrides = h("div", { id: "override-rows" });

  const builds = h("div", { id: "unregistered-rows" });
  const view = [h("h1", {}, "Channels"),
    h("p", { class: "muted" }, "A channel's settings apply to every native build of the app; each release chooses the bundle the channel serves. A device refused by a setting is told quietly and keeps its bundle."),
    h("div", { class: "row" }, h("div", {}, h("label", { for: "channels-app" }, "App"), appSelect)),
    h("h2", {}, "Settings"), channelList, admin ? h("section", { class: "card" }, newChannel) : null,
    h("h2", {}, "Devices"),
    h("section", { class: "card" }, h("p", { class: "muted" }, "Put devices on a channel whatever they ask for; they get its bundle at their next check."),
      findForm, admin ? forceForm : null),
    h("h3", {}, "Devices on a channel by override"), overrides,
    h("h2", {}, "Native builds without a release"),
    h("p", { class: "muted" }, "Store builds devices run that no release registers: they get no update (quietly) until one does."),
    builds];

  const drawChannels = (channels) => {
    const next = new Map();
    for (const channel of channels) {
      const data = JSON.stringify(channel);
      const kept = cards.get(channel.channel);
      if (kept && kept.data === data) { next.set(channel.channel, kept); continue; }
      const card = channelCard(channel, admin, () => refresh());
      // Keep the focus on the redrawn card (its Save button) after a save.
      if (kept && kept.card.contains(document.activeElement)) setTimeout(() => (card.querySelector("button") || card).focus(), 0);
      next.set(channel.channel, { data, card });
    }
    cards = next;
    channelList.replaceChildren(...[...cards.values()].map((c) => c.card));
    if (!channels.length) channelList.replaceChildren(h("p", { class: "muted" }, "No app yet: register a store build on the Releases page first."));
    const chosen = forceChannel.value;
    forceChannel.replaceChildren(...channels.map((c) => h("option", { value: c.channel }, c.channel)));
    if (channels.some((c) => c.channel === chosen)) forceChannel.value = chosen;
  };

  const drawOverrides = (list) => {
    overrides.replaceChildren(!list.length ? h("p", { class: "muted" }, "No device is on a channel by override.")
      : h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Device", "Channel", "Put there by", "Since", "Actions"].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.map((o) => h("tr", { "data-override": o.device_id },
          h("td", { "data-label": "Device" }, h("code", {}, o.device_id)),
          h("td", { "data-label": "Channel" }, o.channel),
          h("td", { "data-label": "Put there by" }, overrideSource(o)),
          h("td", { "data-label": "Since" }, formatDate(o.updated_at)),
          h("td", { "data-label": "Actions" }, managedByResource(o) ? h("span", { class: "muted" }, `Read-only: managed by ${o.source}`)
            : admin ? h("button", { type: "button", class: "danger", "data-unset": o.device_id, onclick: () => removeOverride(o) }, "Remove") : null)))))));
  };

  const drawBuilds = (list) => {
    builds.replaceChildren(!list.length ? h("p", { class: "muted" }, "Every native build devices asked about has a release.")
      : h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["App", "Platform", "Native version", "Build number", "Devices", "Last seen", "Actions"].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.map((b) => h("tr", {},
          h("td", { "data-label": "App" }, b.app_id),
          h("td", { "data-label": "Platform" }, b.platform),
          h("td", { "data-label": "Native version" }, h("strong", {}, b.version_name)),
          h("td", { "data-label": "Build number" }, b.version_code),
          h("td", { "data-label": "Devices" }, `${b.devices} (${b.checks} update checks)`),
          h("td", { "data-label": "Last seen" }, formatDate(b.last_seen)),
          h("td", { "data-label": "Actions" }, admin ? h("button", { type: "button", "data-register": `${b.platform}:${b.app_id}:${b.version_name}:${b.version_code}`,
            onclick: () => { buildToRegister = b; location.hash = "#/releases"; } }, "Register this build") : null)))))));
  };

  return { view, reload: async () => {
    const [channels, unregistered] = await Promise.all([api("GET", "channels.list"), api("GET", "builds.unregistered")]);
    const apps = [...new Set(channels.data.map((c) => c.app_id))].sort();
    if (!apps.includes(app)) { app = apps[0] || ""; cards = new Map(); }
    appSelect.replaceChildren(...apps.map((a) => h("option", { value: a }, a)));
    appSelect.value = app;
    drawChannels(channels.data.filter((c) => c.app_id === app));
    drawOverrides(app ? (await api("GET", `devices.list?app_id=${encodeURIComponent(app)}`)).data : []);
    drawBuilds(unregistered.data);
  } };
}

async function removeOverride(o) {
  const confirmed = await confirmDialog(`Remove the override of ${o.device_id}?`,
    `The device leaves channel "${o.channel}" at its next check, for the channel it asks for or the app's default channel.`, "Remove", true);
  if (confirmed && await attempt(() => api("POST", "devices.unset-channel", { app_id: o.app_id, device_ids: [o.device_id] }))) {
    toast("Override removed");
    refresh();
  }
}

// ---- tokens -------------------------------------------------------------------------------

const SCOPES = [["read-only", "Read-only: lists and activity"], ["upload", "Upload: bundles only (for CI)"], ["full", "Full access"]];

function showTokens() {
  const error = h("p", { class: "error", id: "token-error", role: "alert" });
  const name = h("input", { id: "token-name", placeholder: "github-actions", required: true, maxlength: 64 });
  const scope = h("select", { id: "token-scope" }, SCOPES.map(([value, label]) => h("option", { value }, label)));
  const secret = h("div", { id: "token-secret", "aria-live": "polite" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const made = await attempt(() => api("POST", "tokens.create", { name: name.value.trim(), scope: scope.value }), error);
      if (!made) return;
      form.reset();
      await refresh();
      secret.replaceChildren(h("section", { class: "card notice" },
        h("h2", {}, `Token "${made.data.name}" (${made.data.scope})`),
        h("p", {}, "Copy it now: it is shown only this once. Send it as x-api-key or Authorization: Bearer."),
        h("code", { id: "token-value", class: "secret" }, made.token)));
    },
  }, h("div", { class: "row" },
    h("div", {}, h("label", { for: "token-name" }, "Name"), name),
    h("div", {}, h("label", { for: "token-scope" }, "Scope"), scope)),
  h("p", {}, h("button", { type: "submit", id: "create-token" }, "Create token")), error);
  const list = h("div");
  const view = [h("h1", {}, "API tokens"), secret,
    h("section", { class: "card" }, h("h2", {}, "Create a token"), form), list];
  return { view, reload: async () => {
    const tokens = await api("GET", "tokens.list");
    const rows = tokens.data.map((t) => h("tr", { "data-token": t.id },
      h("td", { "data-label": "Name" }, h("strong", {}, t.name)),
      h("td", { "data-label": "Scope" }, t.scope),
      h("td", { "data-label": "Created" }, formatDate(t.created_at), h("div", { class: "muted" }, `by ${t.created_by}`)),
      h("td", { "data-label": "Actions" }, h("button", { type: "button", class: "danger", "data-revoke": t.name, onclick: () => revokeToken(t) }, "Revoke"))));
    list.replaceChildren(tokens.data.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Scope", "Created", "Actions"].map((t) => h("th", {}, t)))),
      h("tbody", { id: "token-rows" }, rows))) : h("p", { class: "muted", id: "token-rows" }, "No scoped tokens yet."));
  } };
}

async function revokeToken(token) {
  const confirmed = await confirmDialog(`Revoke "${token.name}"?`,
    `Every request with this ${token.scope} token is refused from now on, on every replica. This cannot be undone.`, "Revoke", true);
  if (confirmed && await attempt(() => api("POST", "tokens.revoke", { token_id: token.id }))) { toast("Token revoked"); refresh(); }
}

// ---- public keys --------------------------------------------------------------------------

/** The public key each app's encrypted bundles are checked with (the CLI's .capgo_key_v2.pub). */
function showKeys(admin) {
  const error = h("p", { class: "error", id: "key-error", role: "alert" });
  const appId = h("input", { id: "key-app-id", placeholder: "com.example.app", required: true });
  const pem = h("textarea", { id: "key-pem", rows: 6, required: true, placeholder: "-----BEGIN RSA PUBLIC KEY-----" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const set = await attempt(() => api("POST", "public-keys.set", { app_id: appId.value.trim(), public_key: pem.value }), error);
      if (!set) return;
      form.reset();
      toast(`Key ${set.data.key_id} registered for ${set.data.app_id}`);
      refresh();
    },
  }, h("label", { for: "key-app-id" }, "App id"), appId,
  h("label", { for: "key-pem" }, "Public key (.capgo_key_v2.pub, never the private key)"), pem,
  h("p", {}, h("button", { type: "submit", id: "set-key" }, "Register key")), error);
  const list = h("div");
  const view = [h("h1", {}, "Public keys"),
    h("p", { class: "muted" }, "With an app's key registered, its encrypted uploads are decrypted and checked (zip and checksum) before they are stored; without one they are stored as sent."),
    admin ? h("section", { class: "card" }, h("h2", {}, "Register an app's key"), form) : null, list];
  return { view, reload: async () => {
    const keys = await api("GET", "public-keys.list");
    const rows = keys.data.map((k) => h("tr", { "data-key": k.app_id },
      h("td", { "data-label": "App" }, h("strong", {}, k.app_id)),
      h("td", { "data-label": "Key id" }, h("code", { title: k.public_key }, k.key_id), h("div", { class: "muted" }, `RSA ${k.bits}`)),
      h("td", { "data-label": "Registered" }, formatDate(k.registered_at), h("div", { class: "muted" }, `by ${k.registered_by}`)),
      h("td", { "data-label": "Actions" }, admin ? h("button", { type: "button", class: "danger", "data-remove-key": k.app_id, onclick: () => removeKey(k) }, "Remove") : "")));
    list.replaceChildren(keys.data.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["App", "Key id", "Registered", "Actions"].map((t) => h("th", {}, t)))),
      h("tbody", { id: "key-rows" }, rows))) : h("p", { class: "muted", id: "key-rows" }, "No public keys registered: encrypted uploads are stored unchecked."));
  } };
}

async function removeKey(key) {
  const confirmed = await confirmDialog(`Remove the key of ${key.app_id}?`,
    "Encrypted uploads of this app will be stored without being decrypted and checked.", "Remove", true);
  if (confirmed && await attempt(() => api("POST", "public-keys.delete", { app_id: key.app_id }))) { toast("Key removed"); refresh(); }
}

// ---- audit log ----------------------------------------------------------------------------

function showAudit() {
  const body = h("tbody", { id: "audit-rows" });
  const more = h("button", { type: "button", class: "secondary", id: "audit-more", hidden: true }, "Older entries");
  let cursor = "";
  const load = async () => {
    const page = await api("GET", `audit.list?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    body.append(...page.data.map((e) => h("tr", { class: e.result === "failure" ? "failed" : "" },
      h("td", { "data-label": "When" }, formatDate(e.at)),
      h("td", { "data-label": "Who" }, e.actor, h("div", { class: "muted" }, e.client_ip)),
      h("td", { "data-label": "Action" }, h("code", {}, e.action)),
      h("td", { "data-label": "Target" }, e.target || h("span", { class: "muted" }, "—")),
      h("td", { "data-label": "Result" }, e.result === "success" ? `${e.status}` : h("span", { class: "error" }, `${e.status} ${e.message}`)))));
    cursor = page.next || "";
    more.hidden = !page.next;
  };
  more.addEventListener("click", () => attempt(load));
  const view = [h("h1", {}, "Audit log"),
    h("p", { class: "muted" }, "Every change made through the API or this page, newest first, including refused ones."),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Target", "Result"].map((t) => h("th", {}, t)))), body)),
    h("p", {}, more)];
  return { view, reload: async () => {
    body.replaceChildren();
    cursor = "";
    await load();
  } };
}

// ---- overview -----------------------------------------------------------------------------

/** The app the overview shows, kept across visits. */
const OVERVIEW_APP = "capgo.overview-app";

/** Bars of `values` (0..1 each) per day, as SVG, with the numbers in each bar's title; the
 * table beside it carries the same numbers for screen readers and copying. */
function shareChart(label, days, color) {
  // `top` leaves room for the 100% label; a bar is at most 48 units wide however few the days.
  const width = 700, height = 170, pad = 30, top = 12, slot = (width - pad) / Math.max(days.length, 1);
  const barWidth = Math.max(1, Math.min(48, slot * 0.7));
  const y = (share) => height - pad - (height - pad - top) * share;
  const bars = days.map((d, i) => {
    const h2 = y(0) - y(Math.min(1, d.value));
    return svg("rect", { x: pad + i * slot + (slot - barWidth) / 2, y: y(Math.min(1, d.value)), width: barWidth, height: h2, fill: color },
      svg("title", {}, `${d.day}: ${d.text}`));
  });
  const step = Math.max(1, Math.ceil(days.length / 8));
  const labels = days.filter((_, i) => i % step === 0).map((d) => svg("text",
    { x: pad + days.indexOf(d) * slot + slot / 2, y: height - 10, "text-anchor": "middle", "font-size": 11, fill: "#5b6676" }, d.day.slice(5)));
  const grid = [0.5, 1].map((share) => svg("line", { x1: pad, x2: width, y1: y(share), y2: y(share), stroke: "#d9dee5" }));
  const ticks = [0.5, 1].map((share) => svg("text", { x: 0, y: y(share) + 4, "font-size": 11, fill: "#5b6676" }, `${share * 100}%`));
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", width: "100%", "aria-label": label }, ...grid, ...ticks, ...bars, ...labels);
}

const percent = (share) => share === null || share === undefined ? "—" : `${(share * 100).toFixed(1)}%`;
const days = (n) => n === null || n === undefined ? "not yet" : n === 0 ? "the first day" : `${n} day${n === 1 ? "" : "s"}`;

function showOverview() {
  const picker = h("select", { id: "overview-app" });
  const body = h("div", { id: "overview-body", "aria-live": "polite" });
  picker.addEventListener("change", () => {
    localStorage.setItem(OVERVIEW_APP, picker.value);
    attempt(() => drawOverview(picker.value, body));
  });
  const view = [h("h1", {}, "Overview"),
    h("div", { class: "row compact" }, h("div", {}, h("label", { for: "overview-app" }, "App"), picker)),
    body];
  return { view, reload: async () => {
    const [releases, bundles] = await Promise.all([api("GET", "releases.list"), api("GET", "bundles.list")]);
    const apps = [...new Set([...releases.data, ...bundles.data].map((x) => x.app_id))].sort();
    if (!apps.length) {
      picker.replaceChildren();
      body.replaceChildren(h("p", { class: "muted", id: "overview-empty" }, "No app yet: upload a bundle and create a release, then devices' check-ins show here."));
      return;
    }
    const wanted = localStorage.getItem(OVERVIEW_APP);
    const app = apps.includes(wanted) ? wanted : apps[0];
    picker.replaceChildren(...apps.map((a) => h("option", { value: a, selected: a === app }, a)));
    await drawOverview(app, body);
  } };
}

async function drawOverview(app, body) {
  const data = await api("GET", `apps.overview?app_id=${encodeURIComponent(app)}`);
  const channels = data.releases.flatMap((r) => r.channels.map((c) => ({ release: r.release, ...c })));
  const build = (r) => `${r.platform} ${r.version_name} (${r.version_code})`;
  const recentTotal = channels.reduce((sum, c) => sum + c.devices_recent, 0);
  const weekTotal = channels.reduce((sum, c) => sum + c.devices_week, 0);
  const fleetRows = channels.map((c) => h("tr", { "data-release": c.release.id, "data-channel": c.channel },
    h("td", { "data-label": "Build" }, build(c.release)),
    h("td", { "data-label": "Channel" }, c.channel),
    h("td", { "data-label": "Serves" }, c.serves || h("span", { class: "muted" }, "missing bundle"),
      c.rollout ? h("div", { class: "badge", title: `Staged rollout, ${c.rollout.phase}` }, `rollout ${ROLLOUT_PHASES[c.rollout.phase]} at ${formatPercent(c.rollout.percent)}`) : null),
    h("td", { "data-label": "Devices, last 24 h" }, String(c.devices_recent)),
    h("td", { "data-label": "Devices, 7 days" }, String(c.devices_week)),
    h("td", { "data-label": "Running (7 days)" }, c.bundles.length
      ? c.bundles.map((b) => `${b.bundle}: ${b.devices_week}`).join(" · ")
      : h("span", { class: "muted" }, "no check-in"))));
  const adoption = channels.filter((c) => c.serves && c.adoption.days.length).map((c) => {
    const last = c.adoption.days[c.adoption.days.length - 1];
    return h("section", { class: "card adoption", "data-channel": c.channel, "data-release": c.release.id },
      h("h3", {}, `${build(c.release)} · ${c.channel}: ${c.serves}`),
      h("p", {}, `${percent(last.share)} of ${last.active_devices} active devices ran it on ${last.day}. `,
        `Half of them: ${days(c.adoption.days_to_half)}; nine in ten: ${days(c.adoption.days_to_ninety_percent)} `,
        c.adoption.promoted
          ? `(counted from the promote on ${c.adoption.counted_from}).`
          : `(counted from ${c.adoption.counted_from}, the first day a device ran it: the promote's time is not known).`),
      shareChart(`Share of ${c.channel} devices of ${build(c.release)} on ${c.serves}, per day`,
        c.adoption.days.map((d) => ({ day: d.day, value: d.share, text: `${percent(d.share)} (${d.on_bundle} of ${d.active_devices})` })), "#0b62d6"));
  });
  const healthRows = data.bundles.map((b) => h("tr", { class: (b.failure_rate_week || 0) > 0.05 ? "failed" : "", "data-bundle": b.bundle },
    h("td", { "data-label": "Bundle" }, b.bundle),
    h("td", { "data-label": "Installed" }, String(b.installed_week)),
    h("td", { "data-label": "Failed" }, String(b.failed_week)),
    h("td", { "data-label": "Failure rate" }, percent(b.failure_rate_week))));
  const failures = data.failures_by_day;
  const builds = data.unregistered_builds.map((b) => h("tr", {},
    h("td", { "data-label": "Build" }, build(b)),
    h("td", { "data-label": "Devices" }, String(b.devices)),
    h("td", { "data-label": "Last seen" }, formatDate(b.last_seen))));
  const table = (id, heads, rows, empty) => rows.length
    ? h("div", { class: "table-wrap" }, h("table", { id }, h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)))
    : h("p", { class: "muted" }, empty);
  body.replaceChildren(
    h("p", { id: "overview-summary" }, `${recentTotal} devices checked in over the last 24 hours, ${weekTotal} in the last 7 days (UTC days), counted per native build and channel. Figures are distinct devices, estimated within about 2%.`),
    h("h2", {}, "Where the fleet is"),
    table("overview-fleet", ["Build", "Channel", "Serves", "Devices, last 24 h", "Devices, 7 days", "Running (7 days)"], fleetRows, "No release yet."),
    h("h2", {}, "Adoption of what each channel serves"),
    ...(adoption.length ? adoption : [h("p", { class: "muted" }, "No check-ins in the last 30 days.")]),
    h("h2", {}, "Bundle health, last 7 days"),
    table("overview-health", ["Bundle", "Installed", "Failed", "Failure rate"], healthRows, "No device reported installing or failing a bundle this week."),
    h("h2", {}, "Failure rate per day"),
    failures.length
      ? h("div", { id: "overview-failures" }, shareChart("Failure rate per day: devices that failed among those that installed or failed",
        failures.map((d) => ({ day: d.day, value: d.failure_rate || 0, text: `${percent(d.failure_rate)} (${d.failed} failed, ${d.installed} installed)` })), "#b42318"),
        table("overview-failure-days", ["Day", "Installed", "Failed", "Rate"], failures.map((d) => h("tr", {},
          h("td", { "data-label": "Day" }, d.day), h("td", { "data-label": "Installed" }, String(d.installed)),
          h("td", { "data-label": "Failed" }, String(d.failed)), h("td", { "data-label": "Rate" }, percent(d.failure_rate)))), ""))
      : h("p", { class: "muted" }, "No reports in the last 30 days."),
    h("h2", {}, "Builds devices run that have no release"),
    table("overview-unregistered", ["Build", "Devices", "Last seen"], builds, "None: every build devices asked about has a release."));
}

// ---- routing ------------------------------------------------------------------------------

const PAGES = { overview: showOverview, releases: () => showReleases(whoami.scope === "full"), bundles: showBundles, channels: () => showChannels(whoami.scope === "full"), keys: () => showKeys(whoami.scope === "full"), tokens: showTokens, audit: showAudit };

/** Who is signed in ({name, scope}), from /api/v1/whoami. */
let whoami = { name: "", scope: "" };

/** The page on screen and the function that reloads its data. A page is built once when
 * opened and shown when its data has loaded; after a change only its data is redrawn, so text
 * typed into a form stays. Each page function returns {view: [elements], reload}. */
let shown = { page: null, reload: null };

/** Reloads the data of the page on screen. */
async function refresh() {
  if (shown.reload) await attempt(shown.reload);
}

/** Paths of the seed's web client (bookmarks), and the page each one shows here. */
const SEED_PATHS = [[/^\/ui\/app\/upload-bundle\/?$/, "bundles"], [/^\/ui\/app(\/|$)/, "releases"]];

/** The server serves this page for every path under /ui/: show it at /ui/, on the page that
 * matches a seed path, keeping the query (a sign-in answer) for finishSignIn. */
function settlePath() {
  if (location.pathname === "/ui/") return;
  const seed = SEED_PATHS.find(([pattern]) => pattern.test(location.pathname));
  const hash = location.hash || (seed ? `#/${seed[1]}` : "");
  history.replaceState(null, "", `/ui/${location.search}${hash}`);
}

// Each call of route() takes a number; only the latest one moves the focus to the page and
// ends <main>'s aria-busy, so a slow earlier call (the page load's) cannot take the focus back
// after a later one.
let routing = 0;

async function route() {
  const mine = ++routing;
  main.setAttribute("aria-busy", "true");
  try {
    if ((await showPage()) && mine === routing) main.focus({ preventScroll: true });
  } finally {
    if (mine === routing) main.removeAttribute("aria-busy");
  }
}

/** Shows the page the address names (or the sign-in form); true when a page was shown. */
async function showPage() {
  settlePath();
  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error")) {
    const error = await finishSignIn(params).then(() => null, (e) => e.message);
    if (error) return showLogin(error), false;
  }
  if (!credential()) return showLogin(), false;
  const who = await attempt(() => api("GET", "whoami"));
  if (!who) return false;
  document.getElementById("nav").hidden = false;
  document.getElementById("whoami").textContent = `${who.name} (${who.scope})`;
  whoami = who;
  for (const admin of ["tokens", "audit"]) document.getElementById(`nav-${admin}`).hidden = who.scope !== "full";
  const wanted = location.hash.replace(/^#\//, "");
  const page = PAGES[wanted] ? wanted : "overview";
  for (const name of Object.keys(PAGES)) {
    const link = document.getElementById(`nav-${name}`);
    if (name === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (shown.page === page) {
    await refresh();
  } else {
    const next = PAGES[page]();
    shown = { page, reload: next.reload };
    await refresh();
    if (shown.page === page) main.replaceChildren(...next.view);
  }
  return true;
}

document.getElementById("logout").addEventListener("click", () => {
  location.hash = "";
  signOut("Logged out.");
});
window.addEventListener("hashchange", route);
route();
