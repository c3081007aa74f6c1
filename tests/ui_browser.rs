//! The web UI in a real browser (Debian's Chromium, driven over the W3C WebDriver protocol by
//! chromedriver) against the built binary: log in, upload bundles, create a release, promote
//! it, change channel settings, put a device on a channel, register a build devices run without
//! a release, see errors shown in the page, log out; run a staged rollout from the Releases page.
//! Screenshots of the main pages at desktop and phone width go to target/ui-screenshots/.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
}

impl Browser {
    async fn start(chromium: &str, chromedriver: &str) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = http_client();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.display()), "--window-size=1280,900"],
        }}}});
        let session: Value = http
            .post(format!("{root}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Browser {
            http,
            base: format!("{root}/session/{id}"),
            driver,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    async fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        match answer["value"].get("error") {
            Some(error) => Err(format!("{error} {}", answer["value"]["message"])),
            None => Ok(answer["value"].clone()),
        }
    }

    /// `action` on the element `css` matches, found again if the page re-rendered in between
    /// (WebDriver's "stale element reference").
    async fn on_element(&self, css: &str, action: &str, body: Value) {
        for _ in 0..5 {
            let id = self.element(css).await;
            match self
                .try_call("POST", &format!("/element/{id}/{action}"), body.clone())
                .await
            {
                Ok(_) => return,
                Err(e) if e.contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("WebDriver {action} on {css:?}: {e}"),
            }
        }
        panic!("{css:?} kept going stale");
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits (up to 10 s) until `css` matches an element whose text contains `text`.
    async fn wait_text(&self, css: &str, text: &str) {
        let started = Instant::now();
        loop {
            let found = self
                .script("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent).join('\\n')", json!([css]))
                .await;
            if found.as_str().is_some_and(|t| t.contains(text)) {
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let body = self
                    .script("return document.body.innerText", json!([]))
                    .await;
                panic!("no {css:?} containing {text:?}; those have {found}; the page reads {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let started = Instant::now();
        while self
            .script(
                "return document.querySelector(arguments[0]) !== null",
                json!([css]),
            )
            .await
            != json!(true)
        {
            if started.elapsed() > Duration::from_secs(10) {
                let page = self
                    .script(
                        "return [document.body.innerText, window.__capgoErrors]",
                        json!([]),
                    )
                    .await;
                panic!("no element {css:?}; the page reads, with its script errors: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        self.on_element(css, "click", json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "clear", json!({})).await;
        self.on_element(css, "value", json!({"text": text})).await;
    }

    /// Chooses `value` in the `<select>` at `css`, waiting (up to 10 s) until it offers it.
    async fn select(&self, css: &str, value: &str) {
        let started = Instant::now();
        loop {
            let chosen = self
                .script(
                    "const s = document.querySelector(arguments[0]);
                     if (!s || ![...s.options].some(o => o.value === arguments[1])) return false;
                     s.value = arguments[1]; s.dispatchEvent(new Event('change')); return true;",
                    json!([css, value]),
                )
                .await;
            if chosen == json!(true) {
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let body = self
                    .script("return document.body.innerText", json!([]))
                    .await;
                panic!("no {css:?} offering {value:?}; the page reads {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses Tab `times` times, as a keyboard user would.
    async fn press_tab(&self, times: usize) {
        let keys: Vec<Value> = (0..times)
            .flat_map(|_| {
                [
                    json!({"type": "keyDown", "value": "\u{E004}"}),
                    json!({"type": "keyUp", "value": "\u{E004}"}),
                ]
            })
            .collect();
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": keys}]}),
        )
        .await;
    }

    /// `id` (or tag and text) of the focused element.
    async fn focused(&self) -> String {
        self.script(
            "const e = document.activeElement; return e.id || (e.tagName + ':' + e.textContent)",
            json!([]),
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
    }

    /// Waits until the page has shown what its address names (`<main>` no longer aria-busy).
    async fn wait_page_shown(&self) {
        let started = std::time::Instant::now();
        while self
            .script(
                "return document.getElementById('main').hasAttribute('aria-busy')",
                json!([]),
            )
            .await
            == json!(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page stayed busy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `<name>-desktop.png` and `<name>-phone.png`, then back to the desktop size.
    async fn screenshots(&self, name: &str) {
        self.screenshot(&format!("{name}-desktop"), 1280, 900).await;
        self.screenshot(&format!("{name}-phone"), 390, 844).await;
        self.call(
            "POST",
            "/window/rect",
            json!({"width": 1280, "height": 900}),
        )
        .await;
    }

    /// Like `screenshots`, with the element `css` scrolled into view at each width.
    async fn screenshots_of(&self, name: &str, css: &str) {
        for (size, width, height) in [("desktop", 1280, 900), ("phone", 390, 844)] {
            self.call(
                "POST",
                "/window/rect",
                json!({"width": width, "height": height}),
            )
            .await;
            self.script(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})",
                json!([css]),
            )
            .await;
            self.screenshot(&format!("{name}-{size}"), width, height)
                .await;
        }
        self.call(
            "POST",
            "/window/rect",
            json!({"width": 1280, "height": 900}),
        )
        .await;
    }

    /// A screenshot of the page without its toasts (they would cover what it shows).
    async fn screenshot(&self, name: &str, width: u32, height: u32) {
        self.script(
            "document.getElementById('toast').replaceChildren()",
            json!([]),
        )
        .await;
        self.call(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let png = self.call("GET", "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn browser_tools() -> Option<(String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (|| Some((var("CAPGO_TEST_CHROMIUM")?, var("CAPGO_TEST_CHROMEDRIVER")?)))();
    if found.is_none() {
        assert!(
            var("CAPGO_REQUIRE_SERVICES").is_none(),
            "chromium and chromedriver are required: run `scripts/services start`"
        );
        eprintln!("skipped: no browser (run `scripts/services start` and source target/test-services/env)");
    }
    found
}

/// Polls `path` of the management API (up to 10 s) until `done` holds for its answer.
async fn wait_for_api(client: &Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let answer = client.list(path).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} never got there: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Channels page against a server with release android 1.0.0 (10) of APP_ID, whose
/// production channel serves 1.0.1 (`newest_bundle`, the app's newest): a channel's settings
/// changed in its form (and the server's refusal shown there), a device found by its custom id
/// put on a channel and released, and a native build devices run without a release registered
/// from its row with one press on "Create release".
async fn channels_devices_and_unregistered_builds(
    browser: &Browser,
    server: &ServerProcess,
    ui: &str,
    newest_bundle: &str,
) {
    let client = Client::new(server, API_KEY);
    let mut unregistered = device_body("builtin", "8.51.14");
    unregistered["version_build"] = json!("2.0.0");
    unregistered["version_code"] = json!("20");
    let (_, answer) = client.device("/updates", &unregistered).await;
    assert_eq!(answer["error"], "no_release", "{answer}");
    let mut event = device_body("1.0.1", "8.51.14");
    event["action"] = json!("set");
    event["custom_id"] = json!("customer-42");
    assert_eq!(client.device("/stats", &event).await.0, 200);

    browser.go(&format!("{ui}#/channels")).await;
    browser
        .wait_text("[data-channel='production']", "default settings")
        .await;
    let channel = |app: &Value, name: &str| {
        app["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == name)
            .cloned()
    };

    // A new channel, set up before any release serves it: it stops serving Android.
    browser.type_into("#new-channel-name", "beta").await;
    browser.click("#new-channel").await;
    browser.wait_text("[data-channel='beta']", "beta").await;
    browser.click("#channel-beta-allow_android").await;
    browser
        .click("[data-channel-form='beta'] button[type='submit']")
        .await;
    wait_for_api(&client, &format!("channels.list?app_id={APP_ID}"), |list| {
        channel(list, "beta").is_some_and(|c| c["settings"]["allow_android"] == false)
    })
    .await;

    // The server's refusal is shown in the channel's form; then emulators are turned away.
    browser
        .script(
            "const s = document.getElementById('channel-production-update_policy');
             s.add(new Option('sometimes', 'sometimes')); s.value = 'sometimes';",
            json!([]),
        )
        .await;
    browser
        .click("[data-channel-form='production'] button[type='submit']")
        .await;
    browser
        .wait_text("[data-channel-form='production'] .error", "update_policy")
        .await;
    browser
        .select("#channel-production-update_policy", "none")
        .await;
    browser.click("#channel-production-allow_emulator").await;
    browser
        .click("[data-channel-form='production'] button[type='submit']")
        .await;
    wait_for_api(&client, &format!("channels.list?app_id={APP_ID}"), |list| {
        channel(list, "production").is_some_and(|c| c["settings"]["allow_emulator"] == false)
    })
    .await;
    let mut emulator = device_body("builtin", "8.51.14");
    emulator["is_emulator"] = json!(true);
    let (_, answer) = client.device("/updates", &emulator).await;
    assert_eq!(answer["error"], "disable_emulator", "{answer}");
    let still_beta = browser
        .script(
            "return document.getElementById('channel-beta-allow_android').checked",
            json!([]),
        )
        .await;
    assert_eq!(
        still_beta, false,
        "the other channel's form shows its saved state"
    );

    // Find the device by its custom id and put it on beta.
    browser.type_into("#device-query", "customer-42").await;
    browser.click("#device-find").await;
    browser.wait_text("#device-results", DEVICE_ID).await;
    browser.click(&format!("[data-pick='{DEVICE_ID}']")).await;
    let listed = browser
        .script(
            "return document.getElementById('force-devices').value",
            json!([]),
        )
        .await;
    assert_eq!(listed, DEVICE_ID);
    browser.select("#force-channel", "beta").await;
    browser.click("#force-submit").await;
    browser
        .wait_text(&format!("[data-override='{DEVICE_ID}']"), "beta")
        .await;
    let (_, answer) = client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await;
    assert_eq!(
        answer["error"], "disabled_platform_android",
        "the device is on beta, which serves no Android device: {answer}"
    );
    browser
        .wait_text("[data-channel='beta']", "1 device(s) put on it")
        .await;
    browser.script("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshots("channels").await;
    browser
        .script(
            "document.getElementById('device-results').scrollIntoView()",
            json!([]),
        )
        .await;
    browser.screenshots("channel-devices").await;

    // Removing the override takes a confirmation; the device is back on production.
    browser.click(&format!("[data-unset='{DEVICE_ID}']")).await;
    browser.wait_text("#dialog-text", "leaves channel").await;
    browser.click("#dialog-ok").await;
    browser
        .wait_text("#override-rows", "No device is on a channel by override")
        .await;
    let (_, answer) = client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await;
    assert_eq!(answer["version"], "1.0.1", "{answer}");

    // The build devices run without a release, registered from its row.
    browser.wait_text("#unregistered-rows", "2.0.0").await;
    browser
        .click(&format!("[data-register='android:{APP_ID}:2.0.0:20']"))
        .await;
    browser
        .wait_text("#new-release-note", "Registering android")
        .await;
    let form = browser
        .script(
            "return ['new-platform', 'new-app-id', 'new-version-name', 'new-version-code', 'new-builtin']
                 .map(id => document.getElementById(id).value)",
            json!([]),
        )
        .await;
    assert_eq!(
        form,
        json!(["android", APP_ID, "2.0.0", "20", newest_bundle])
    );
    // The focus moves to "Create release" once the page is on screen.
    let started = Instant::now();
    while browser.focused().await != "create-release" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "focus on {}",
            browser.focused().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshots("register-build").await;
    browser.click("#create-release").await;
    browser.wait_text("table", "2.0.0 (20)").await;
    let builds = client.list("builds.unregistered").await;
    assert_eq!(builds["data"], json!([]), "registered: no longer listed");
    let (_, answer) = client.device("/updates", &unregistered).await;
    assert_ne!(answer["error"], "no_release", "{answer}");
    let errors = browser
        .script("return window.__capgoErrors", json!([]))
        .await;
    assert_eq!(errors, json!([]), "no script errors or CSP violations");
}

#[tokio::test]
async fn manage_releases_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let browser = Browser::start(&chromium, &chromedriver).await;
    let ui = format!("{}/ui/", server.management_url);

    // A wrong key is refused in the page.
    browser.go(&ui).await;
    browser.type_into("#api-key", "not-the-right-key").await;
    browser.click("#login").await;
    browser.wait_text("#login-error", "refused").await;
    browser.screenshot("login-desktop", 1280, 900).await;
    browser.type_into("#api-key", API_KEY).await;
    browser.click("#login").await;
    browser.wait_text("h1", "Overview").await;

    // Bundles: two uploads, and a non-zip refused with the server's message.
    browser.go(&format!("{ui}#/bundles")).await;
    let zips = tempfile::tempdir().unwrap();
    for (version, bytes) in [
        ("1.0.0", web_bundle("builtin")),
        ("1.0.1", web_bundle("next")),
        ("bad", b"not a zip".to_vec()),
    ] {
        let path = zips.path().join(format!("{version}.zip"));
        std::fs::write(&path, bytes).unwrap();
        browser.type_into("#upload-app-id", APP_ID).await;
        browser.type_into("#upload-version", version).await;
        let file = browser.element("#upload-file").await;
        browser
            .call(
                "POST",
                &format!("/element/{file}/value"),
                json!({"text": path.to_str().unwrap()}),
            )
            .await;
        browser.click("#upload").await;
        if version == "bad" {
            browser.wait_text("#upload-error", "not a valid zip").await;
        } else {
            browser.wait_text("#bundle-rows", version).await;
        }
    }
    browser.screenshots("bundles").await;

    // Register the store build with 1.0.0 inside.
    let bundles = Client::new(&server, API_KEY).list("bundles.list").await;
    let id_of = |version: &str| {
        bundles["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["version_name"] == version)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    browser.go(&format!("{ui}#/releases")).await;
    browser.type_into("#new-app-id", APP_ID).await;
    browser.type_into("#new-version-name", "1.0.0").await;
    browser.type_into("#new-version-code", "10").await;
    browser.select("#new-builtin", &id_of("1.0.0")).await;
    browser.click("#create-release").await;
    browser.wait_text("table", "1.0.0 (10)").await;

    // Promote 1.0.1 on production, with a confirmation saying what devices get; text typed
    // into the other form meanwhile is still there afterwards.
    browser.type_into("#new-app-id", "com.half.typed").await;
    browser.click("[data-promote$=':production']").await;
    browser.select("#promote-bundle", &id_of("1.0.1")).await;
    browser
        .wait_text("#promote-explain", "will download 1.0.1")
        .await;
    browser.click("#promote-confirm").await;
    browser.wait_text("table", "production: 1.0.1").await;
    let kept = browser
        .script(
            "return document.getElementById('new-app-id').value",
            json!([]),
        )
        .await;
    assert_eq!(kept, "com.half.typed", "the page kept what was typed");
    let favicon = http_client()
        .get(format!("{}/favicon.ico", server.management_url))
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 200, "browsers ask for it on every page");
    assert_eq!(favicon.headers()["content-type"], "image/x-icon");
    let (_, answer) = Client::new(&server, API_KEY)
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await;
    assert_eq!(
        answer["version"], "1.0.1",
        "a device now gets what the page promoted"
    );
    // Device activity: what a device reports shows on the bundle's chart.
    let events: Vec<Value> = ["download_complete", "set"]
        .iter()
        .map(|action| json!({"app_id": APP_ID, "device_id": DEVICE_ID, "action": action, "version_name": "1.0.1"}))
        .collect();
    let (status, _) = Client::new(&server, API_KEY)
        .device("/stats", &Value::Array(events))
        .await;
    assert_eq!(status, 200);
    browser.go(&format!("{ui}#/bundles")).await;
    browser
        .click(&format!("[data-activity='{}']", id_of("1.0.1")))
        .await;
    browser
        .wait_text("#activity-summary", "Downloads 1 · Installs 1 · Failures 0")
        .await;
    browser.screenshot("activity-desktop", 1280, 900).await;
    browser.go(&format!("{ui}#/releases")).await;
    browser.wait_text("table", "production: 1.0.1").await;
    browser.screenshots("releases").await;

    // The date the build reached the stores.
    browser.click("[data-release-date]").await;
    browser
        .script(
            "document.getElementById('release-date').value = '2026-11-20'",
            json!([]),
        )
        .await;
    browser.click("#release-date-save").await;
    let started = Instant::now();
    loop {
        let releases = Client::new(&server, API_KEY).list("releases.list").await;
        if releases["data"][0]["release_date"] == "2026-11-20T00:00:00Z" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "release date not saved: {releases}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    channels_devices_and_unregistered_builds(&browser, &server, &ui, &id_of("1.0.1")).await;

    // A server-side refusal (the same store build again) is shown in the form.
    browser.type_into("#new-app-id", APP_ID).await;
    browser.type_into("#new-version-name", "1.0.0").await;
    browser.type_into("#new-version-code", "10").await;
    browser.select("#new-builtin", &id_of("1.0.0")).await;
    browser.click("#create-release").await;
    browser.wait_text("form .error", "already exists").await;

    // Bookmarks of the seed's client open the matching page, at /ui/.
    let root = server.management_url.clone();
    for (path, heading, hash) in [
        ("/ui/app/upload-bundle", "Bundles", "#/bundles"),
        (
            "/ui/app/release/66ed3030a1b2c3d4e5000065/update",
            "Releases",
            "#/releases",
        ),
        ("/ui/app", "Releases", "#/releases"),
        ("/ui/login", "Overview", ""),
    ] {
        browser.go(&format!("{root}{path}")).await;
        browser.wait_text("h1", heading).await;
        let url = browser.call("GET", "/url", Value::Null).await;
        assert_eq!(url, format!("{ui}{hash}"), "{path}");
        let errors = browser
            .script("return window.__capgoErrors", json!([]))
            .await;
        assert_eq!(
            errors,
            json!([]),
            "{path}: no script errors or CSP violations"
        );
    }

    // Keyboard only: Tab walks the navigation in order, and Enter on a link opens its page.
    browser.go(&format!("{ui}#/releases")).await;
    browser.wait_text("h1", "Releases").await;
    // The page focuses <main> once its data is shown (for screen readers), and marks it
    // aria-busy until then; wait for that, or it could take the focus back from the link.
    browser.wait_page_shown().await;
    browser
        .script("document.getElementById('nav-releases').focus()", json!([]))
        .await;
    let mut walked = vec![browser.focused().await];
    for _ in 0..7 {
        browser.press_tab(1).await;
        walked.push(browser.focused().await);
    }
    assert_eq!(
        walked,
        [
            "nav-releases",
            "nav-bundles",
            "nav-channels",
            "nav-keys",
            "nav-tokens",
            "nav-audit",
            "logout",
            "new-platform"
        ],
        "Tab order: the navigation, then the page's first control"
    );
    browser
        .script("document.getElementById('nav-audit').focus()", json!([]))
        .await;
    browser
        .call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": "\u{E007}"}, {"type": "keyUp", "value": "\u{E007}"}]}]}),
        )
        .await;
    browser.wait_text("h1", "Audit log").await;

    // Tokens: create one (its secret shown once), then revoke it after a confirmation.
    browser.go(&format!("{ui}#/tokens")).await;
    browser.type_into("#token-name", "ci-pipeline").await;
    browser.select("#token-scope", "upload").await;
    browser.click("#create-token").await;
    browser
        .wait_text("#token-secret", "shown only this once")
        .await;
    let secret = browser
        .script(
            "return document.getElementById('token-value').textContent",
            json!([]),
        )
        .await;
    let secret = secret.as_str().unwrap().to_string();
    assert!(secret.starts_with("capgo_tok_"), "{secret}");
    browser.wait_text("#token-rows", "ci-pipeline").await;
    browser.screenshots("tokens").await;
    let upload_client = Client::new(&server, &secret);
    assert_eq!(
        upload_client.list("bundles.list").await["error"]
            .as_str()
            .map(|e| e.contains("scope")),
        Some(true)
    );
    browser.click("[data-revoke='ci-pipeline']").await;
    browser
        .wait_text("#dialog-text", "refused from now on")
        .await;
    browser.click("#dialog-ok").await;
    browser.wait_text("#token-rows", "No scoped tokens").await;
    assert_eq!(
        upload_client.list("bundles.list").await["error"]
            .as_str()
            .map(|e| e.contains("revoked")),
        Some(true)
    );
    // A bad name is refused with the server's message.
    browser.type_into("#token-name", "bad;name").await;
    browser.click("#create-token").await;
    browser
        .wait_text("#token-error", "invalid token name")
        .await;

    // Public keys: a private key is refused with the server's message, the public key (the
    // real CLI's .capgo_key_v2.pub) is registered and listed with its key_id, then removed.
    browser.go(&format!("{ui}#/keys")).await;
    browser
        .wait_text("#key-rows", "No public keys registered")
        .await;
    browser
        .type_into("#key-app-id", "com.example.fixture")
        .await;
    browser
        .type_into("#key-pem", include_str!("fixtures/cli/private_key.pem"))
        .await;
    browser.click("#set-key").await;
    browser
        .wait_text("#key-error", "that is a private key")
        .await;
    browser
        .script(
            "document.getElementById('key-pem').value = arguments[0]",
            json!([include_str!("fixtures/cli/public_key.pem")]),
        )
        .await;
    browser.click("#set-key").await;
    browser.wait_text("#key-rows", "com.example.fixture").await;
    browser.wait_text("#key-rows", "RSA 2048").await;
    browser.screenshots("keys").await;
    browser
        .click("[data-remove-key='com.example.fixture']")
        .await;
    browser
        .wait_text("#dialog-text", "without being decrypted")
        .await;
    browser.click("#dialog-ok").await;
    browser
        .wait_text("#key-rows", "No public keys registered")
        .await;

    // The audit log lists what this session did, refused calls included.
    browser.go(&format!("{ui}#/audit")).await;
    browser.wait_text("#audit-rows", "tokens.revoke").await;
    browser.wait_text("#audit-rows", "public-keys.delete").await;
    browser
        .wait_text("#audit-rows", "releases.set-active")
        .await;
    browser.wait_text("#audit-rows", "not a valid zip").await;
    browser.screenshots("audit").await;

    let errors = browser
        .script("return window.__capgoErrors", json!([]))
        .await;
    assert_eq!(errors, json!([]), "no script errors in the page");

    browser.click("#logout").await;
    browser.wait_text("h1", "Log in").await;
    let nav_hidden = browser
        .script(
            "return document.getElementById('nav').offsetParent === null",
            json!([]),
        )
        .await;
    assert_eq!(nav_hidden, true, "navigation hidden when logged out");
    browser.call("DELETE", "", Value::Null).await;
}

#[tokio::test]
async fn sign_in_with_oidc_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let issuer = common::oidc_issuer::TestIssuer::start().await;
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("OAUTH_ISSUER", issuer.url.as_str()),
            ("OAUTH_CLIENT_ID", common::oidc_issuer::CLIENT_ID),
            ("OAUTH_AUDIENCE", common::oidc_issuer::AUDIENCE),
        ],
    );
    let browser = Browser::start(&chromium, &chromedriver).await;
    let ui = format!("{}/ui/", server.management_url);
    browser.go(&ui).await;
    browser.wait_text("#sso", issuer.url.as_str()).await;
    browser.screenshot("login-sso-desktop", 1280, 900).await;
    // Off to the issuer (which signs alice in at once), back with a code, exchanged with PKCE.
    browser.click("#sso-login").await;
    browser
        .wait_text("#whoami", "oidc:alice <alice@example.com> (full)")
        .await;
    browser.wait_text("h1", "Overview").await;
    let url = browser.call("GET", "/url", Value::Null).await;
    assert!(
        !url.as_str().unwrap().contains("code="),
        "the code is removed from the address bar: {url}"
    );
    // The token works for changes, and the audit log names the person.
    browser.go(&format!("{ui}#/tokens")).await;
    browser.type_into("#token-name", "made-by-alice").await;
    browser.click("#create-token").await;
    browser.wait_text("#token-rows", "oidc:alice").await;
    browser.go(&format!("{ui}#/audit")).await;
    browser
        .wait_text("#audit-rows", "oidc:alice <alice@example.com>")
        .await;
    let errors = browser
        .script("return window.__capgoErrors", json!([]))
        .await;
    assert_eq!(errors, json!([]), "no script errors or CSP violations");
    browser.click("#logout").await;
    browser.wait_text("h1", "Log in").await;
    browser.call("DELETE", "", Value::Null).await;
}

/// What `/updates` offers each device of `ids` while it runs `running`: the version, or `""`
/// when it is told to stay.
async fn offers(client: &Client, ids: &[String], running: &str) -> Vec<(String, String)> {
    let mut offered = Vec::new();
    for id in ids {
        let mut body = device_body(running, "8.51.14");
        body["device_id"] = json!(id);
        let (status, answer) = client.device("/updates", &body).await;
        assert_eq!(status, 200, "{answer}");
        let version = answer["version"]
            .as_str()
            .filter(|_| answer.get("error").is_none())
            .unwrap_or_default();
        offered.push((id.clone(), version.to_string()));
    }
    offered
}

/// The devices of `offered` that were offered `version`.
fn offered(offered: &[(String, String)], version: &str) -> Vec<String> {
    offered
        .iter()
        .filter(|(_, v)| v == version)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Each device of `ids` reports `action` about `version`.
async fn report(client: &Client, ids: &[String], action: &str, version: &str) {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"app_id": APP_ID, "device_id": id, "action": action, "version_name": version, "platform": "android"}))
        .collect();
    let (status, answer) = client.device("/stats", &Value::Array(events)).await;
    assert_eq!(status, 200, "{answer}");
}

/// Opens the promote dialog of `release`'s production channel and fills it for a staged rollout
/// of `bundle` with `plan`: [steps, interval, failure gate in percent, min devices]; waits until
/// the dialog explains it with `explained` (the caller presses "Start rollout").
async fn fill_rollout_form(
    browser: &Browser,
    release: &str,
    bundle: &str,
    plan: [&str; 4],
    explained: &str,
) {
    browser
        .click(&format!("[data-promote='{release}:production']"))
        .await;
    browser.select("#promote-bundle", bundle).await;
    browser.click("#promote-staged").await;
    for (field, value) in [
        "#rollout-steps",
        "#rollout-interval",
        "#rollout-gate",
        "#rollout-min-devices",
    ]
    .into_iter()
    .zip(plan)
    {
        browser.type_into(field, value).await;
    }
    browser.wait_text("#promote-explain", explained).await;
    browser.wait_text("#promote-confirm", "Start rollout").await;
}

/// Presses one of a rollout's buttons and accepts its confirmation once it says `says`.
async fn move_rollout_in_page(browser: &Browser, release: &str, action: &str, says: &str) {
    browser
        .click(&format!(
            "[data-rollout-action='{release}:production:{action}']"
        ))
        .await;
    browser.wait_text("#dialog-text", says).await;
    browser.click("#dialog-ok").await;
}

/// A staged rollout run from the Releases page, against a release whose production channel
/// serves 1.0.1: started from the promote dialog with a one-second interval; its step, share
/// and the canary's health shown (and kept up to date by the page itself) as devices report;
/// paused and resumed; aborted after a confirmation, every device back on 1.0.1 and the reason
/// shown; started again and left to finish by itself as healthy devices report; then another
/// one promoted by hand. Each move is checked on the page and in the API.
#[tokio::test]
async fn stage_a_rollout_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    // The simulated devices all come from one address.
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "0"),
            ("STATS_EVENTS_PER_MINUTE", "0"),
        ],
    );
    let client = Client::new(&server, API_KEY);
    let builtin = client.upload_bundle("1.0.0").await;
    let stable = client.upload_bundle("1.0.1").await;
    let canary = client.upload_bundle("1.1.0").await;
    let release = client.create_release("android", &builtin).await;
    client.set_active(&release, &stable, "production").await;
    let rollout_path = format!("rollouts.list?release_id={release}");
    let phase_is = |phase: &'static str| move |list: &Value| list["data"][0]["phase"] == phase;
    let panel = format!("[data-rollout='{release}:production']");
    let fleet: Vec<String> = (0..100)
        .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
        .collect();

    let browser = Browser::start(&chromium, &chromedriver).await;
    let ui = format!("{}/ui/", server.management_url);
    browser.go(&ui).await;
    browser.type_into("#api-key", API_KEY).await;
    browser.click("#login").await;
    browser.wait_text("h1", "Overview").await;
    browser.go(&format!("{ui}#/releases")).await;
    browser.wait_text("h1", "Releases").await;
    browser.wait_page_shown().await;

    // Started from the promote dialog: the page shows the first step, waiting for devices.
    fill_rollout_form(
        &browser,
        &release,
        &canary,
        ["20, 50, 100", "1s", "20", "5"],
        "move from 1.0.1 to 1.1.0 in steps of 20% → 50% → 100% of devices, one step every 1s \
         while at most 20% of the devices that report fail (and at least 5 have reported); \
         past the gate every device goes back to 1.0.1",
    )
    .await;
    browser.screenshot("rollout-start-desktop", 1280, 900).await;
    browser.click("#promote-confirm").await;
    let started = wait_for_api(&client, &rollout_path, phase_is("progressing")).await;
    let rollout = &started["data"][0];
    assert_eq!(
        (
            &rollout["canary_bundle_id"],
            &rollout["stable_bundle_id"],
            &rollout["steps"],
            &rollout["interval"],
            &rollout["max_failure_rate"],
            &rollout["min_devices"],
            &rollout["percent"],
        ),
        (
            &json!(canary),
            &json!(stable),
            &json!([20.0, 50.0, 100.0]),
            &json!("1s"),
            &json!(0.2),
            &json!(5),
            &json!(20.0)
        ),
        "the plan typed into the page: {rollout}"
    );
    browser.wait_text(&panel, "Progressing").await;
    browser
        .wait_text(&panel, "20% of devices get 1.1.0 (step 1 of 3)")
        .await;
    browser
        .wait_text(&panel, "0 device(s) reported on 1.1.0, 0 failed")
        .await;
    browser.wait_text(&panel, "5 more must report").await;
    browser
        .wait_text(&panel, "Next: 50% of devices get 1.1.0")
        .await;
    let bar = browser
        .script(
            "const b = document.querySelector(arguments[0] + ' [role=progressbar]');
             return [b.getAttribute('aria-valuenow'), b.querySelectorAll('.rollout-tick').length,
                     document.querySelector(arguments[0] + ' [aria-current=step]').textContent]",
            json!([panel]),
        )
        .await;
    assert_eq!(
        bar,
        json!(["20", 2, "20%"]),
        "the bar: share, marks of the steps before 100%, the current step"
    );
    browser
        .wait_text(&format!("[data-release='{release}']"), "production: 1.0.1")
        .await;
    let change_offered = browser
        .script(
            "return document.querySelector(`[data-promote='${arguments[0]}:production']`) !== null",
            json!([release]),
        )
        .await;
    assert_eq!(
        change_offered, false,
        "no direct change of a channel during its rollout"
    );

    // Paused: the confirmation says what stays as it is. The server answers late here, so the
    // buttons are seen disabled while the call runs; the focus is on the rollout afterwards.
    browser
        .script(
            "const send = window.fetch;
             window.fetch = (url, ...rest) => String(url).includes('rollouts.pause')
               ? new Promise((wake) => setTimeout(wake, 1500)).then(() => send(url, ...rest))
               : send(url, ...rest);",
            json!([]),
        )
        .await;
    move_rollout_in_page(&browser, &release, "pause", "No step is taken").await;
    // The dialog's close event comes a moment after the click: look until the buttons change.
    let waiting = Instant::now();
    loop {
        let seen = browser
            .script(
                "return [[...document.querySelectorAll(arguments[0] + ' button')].map(b => b.disabled),
                         document.querySelector(arguments[0] + ' .badge').textContent]",
                json!([panel]),
            )
            .await;
        if seen[0] == json!([true, true, true]) {
            assert_eq!(seen[1], "Progressing", "disabled while the call runs");
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "every button of the rollout is disabled while its call runs: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser
        .wait_text(&format!("{panel} .badge"), "Paused")
        .await;
    let after = browser
        .script(
            "return [...document.querySelectorAll(arguments[0] + ' button')].map(b => b.disabled)
                 .concat(document.activeElement.dataset.rollout || document.activeElement.outerHTML)",
            json!([panel]),
        )
        .await;
    assert_eq!(
        after,
        json!([false, false, false, format!("{release}:production")]),
        "the buttons back, the focus on the rollout"
    );
    browser
        .wait_text(&panel, "the gate is not checked until it is resumed")
        .await;
    wait_for_api(&client, &rollout_path, phase_is("paused")).await;

    // Devices report while it is paused: three of the canary's (two installs, one failure),
    // fewer than the five a verdict needs; the page shows it without being reloaded.
    let first_offers = offers(&client, &fleet, "1.0.1").await;
    let in_canary = offered(&first_offers, "1.1.0");
    assert!(
        (5..=40).contains(&in_canary.len()),
        "about 20% of 100 devices get the canary: {}",
        in_canary.len()
    );
    report(&client, &in_canary[..2], "set", "1.1.0").await;
    report(&client, &in_canary[2..3], "download_fail", "1.1.0").await;
    browser
        .wait_text(
            &panel,
            "3 device(s) reported on 1.1.0, 1 failed (33.33%; the gate is 20%)",
        )
        .await;
    browser.wait_text(&panel, "2 more must report").await;
    let seen = wait_for_api(&client, &rollout_path, |list| {
        list["data"][0]["devices"] == 3
    })
    .await;
    assert_eq!(seen["data"][0]["failed"], 1, "{seen}");
    browser.screenshots_of("rollout", &panel).await;

    // Resumed: the step runs again, and without five devices it stays there.
    move_rollout_in_page(
        &browser,
        &release,
        "resume",
        "this step runs its whole 1s again",
    )
    .await;
    browser
        .wait_text(&format!("{panel} .badge"), "Progressing")
        .await;
    wait_for_api(&client, &rollout_path, phase_is("progressing")).await;

    // Aborted: every device goes back to 1.0.1, and the page says why it rolled back.
    move_rollout_in_page(
        &browser,
        &release,
        "abort",
        "Every device on channel production of android 1.0.0 (10) goes back to bundle 1.0.1",
    )
    .await;
    browser
        .wait_text(&format!("{panel} .badge"), "Rolled back")
        .await;
    browser
        .wait_text(
            &format!("{panel} [data-rollout-reason]"),
            "aborted by management-token",
        )
        .await;
    browser
        .wait_text(&panel, "Every device on channel production gets 1.0.1")
        .await;
    let aborted = wait_for_api(&client, &rollout_path, phase_is("rolled_back")).await;
    assert!(
        aborted["data"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("aborted by")),
        "{aborted}"
    );
    let back = offers(&client, &in_canary, "1.1.0").await;
    assert_eq!(
        offered(&back, "1.0.1").len(),
        in_canary.len(),
        "every canary device is told to go back to 1.0.1: {back:?}"
    );
    browser.screenshots_of("rollout-rolled-back", &panel).await;

    // A refusal is shown as the page shows errors: the channel already serves 1.0.1.
    browser
        .click(&format!("[data-promote='{release}:production']"))
        .await;
    browser.select("#promote-bundle", &stable).await;
    browser.click("#promote-staged").await;
    browser.click("#promote-confirm").await;
    browser.wait_text("#toast", "already serves").await;

    // Started again, and healthy devices take it through every step by themselves.
    fill_rollout_form(
        &browser,
        &release,
        &canary,
        ["50, 100", "1s", "20", "5"],
        "in steps of 50% → 100% of devices",
    )
    .await;
    browser.click("#promote-confirm").await;
    browser
        .wait_text(&panel, "50% of devices get 1.1.0 (step 1 of 2)")
        .await;
    let second_offers = offers(&client, &fleet, "1.0.1").await;
    let in_canary = offered(&second_offers, "1.1.0");
    assert!(in_canary.len() >= 5, "{}", in_canary.len());
    report(&client, &in_canary, "set", "1.1.0").await;
    browser.wait_text(&format!("{panel} .badge"), "Done").await;
    browser
        .wait_text(&panel, "channel production serves 1.1.0 to every device")
        .await;
    browser
        .wait_text(&format!("[data-release='{release}']"), "production: 1.1.0")
        .await;
    let done = client.list(&rollout_path).await;
    assert_eq!(
        (&done["data"][0]["phase"], &done["data"][0]["percent"]),
        (&json!("done"), &json!(100.0)),
        "{done}"
    );
    let releases = client.list("releases.list").await;
    assert_eq!(releases["data"][0]["channels"]["production"], canary);

    // Promoted by hand: 1.2.0 reaches every device at once, whatever the plan.
    let next = client.upload_bundle("1.2.0").await;
    browser.call("POST", "/refresh", json!({})).await;
    browser.wait_page_shown().await;
    fill_rollout_form(
        &browser,
        &release,
        &next,
        ["10, 100", "1h", "5", "10"],
        "move from 1.1.0 to 1.2.0",
    )
    .await;
    browser.click("#promote-confirm").await;
    browser
        .wait_text(&panel, "10% of devices get 1.2.0 (step 1 of 2)")
        .await;
    move_rollout_in_page(
        &browser,
        &release,
        "promote",
        "Every device on channel production of android 1.0.0 (10) gets bundle 1.2.0",
    )
    .await;
    browser
        .wait_text(&panel, "channel production serves 1.2.0 to every device")
        .await;
    wait_for_api(&client, &rollout_path, phase_is("done")).await;
    let releases = client.list("releases.list").await;
    assert_eq!(releases["data"][0]["channels"]["production"], next);
    let (_, answer) = client
        .device("/updates", &device_body("1.1.0", "8.51.14"))
        .await;
    assert_eq!(answer["version"], "1.2.0", "{answer}");

    let errors = browser
        .script("return window.__capgoErrors", json!([]))
        .await;
    assert_eq!(errors, json!([]), "no script errors or CSP violations");
    browser.call("DELETE", "", Value::Null).await;
}

/// The overview, the landing page: a fleet simulated through real HTTP (200 devices on the
/// builtin bundle, 80 of them moving to 1.0.1, 20 others failing it) shows on the page with the
/// numbers that were sent (distinct devices, within the sketch's error), at desktop and phone
/// width, without script errors.
#[tokio::test]
async fn the_overview_shows_where_the_fleet_is_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "0"),
            ("STATS_EVENTS_PER_MINUTE", "0"),
        ],
    );
    let client = Client::new(&server, API_KEY);
    let builtin = client.upload_bundle("1.0.0").await;
    let next = client.upload_bundle("1.0.1").await;
    let release = client.create_release("android", &builtin).await;
    client.set_active(&release, &next, "production").await;
    let fleet: Vec<String> = (0..200)
        .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
        .collect();
    offers(&client, &fleet, "builtin").await;
    report(&client, &fleet[..80], "set", "1.0.1").await;
    report(&client, &fleet[100..120], "download_fail", "1.0.1").await;
    offers(&client, &fleet[..80], "1.0.1").await;
    // A build without a release.
    let mut unregistered = device_body("builtin", "8.51.14");
    unregistered["version_build"] = json!("2.0.0");
    client.device("/updates", &unregistered).await;

    // Counts are written every 10 s, off the request path.
    let started = Instant::now();
    let overview = loop {
        let overview = client.list(&format!("apps.overview?app_id={APP_ID}")).await;
        let week = &overview["releases"][0]["channels"];
        let seen = week
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == "production"))
            .map(|c| c["devices_week"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if seen > 0
            && !overview["unregistered_builds"]
                .as_array()
                .unwrap()
                .is_empty()
        {
            break overview;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{overview}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let production = overview_channel(&overview, "production");
    let devices_week = production["devices_week"].as_u64().unwrap();
    assert!(devices_week.abs_diff(200) <= 6, "{production}");
    let on_next = production["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bundle"] == "1.0.1")
        .unwrap()["devices_week"]
        .as_u64()
        .unwrap();
    assert!(on_next.abs_diff(80) <= 3, "{production}");

    let browser = Browser::start(&chromium, &chromedriver).await;
    let ui = format!("{}/ui/", server.management_url);
    browser.go(&ui).await;
    browser.type_into("#api-key", API_KEY).await;
    browser.click("#login").await;
    browser.wait_text("h1", "Overview").await;
    browser.wait_page_shown().await;
    let row = format!("#overview-fleet [data-release='{release}'][data-channel='production']");
    browser.wait_text(&row, "1.0.1").await;
    // The page shows what the API computed from what was sent.
    browser.wait_text(&row, &format!("{devices_week}")).await;
    browser.wait_text(&row, &format!("1.0.1: {on_next}")).await;
    let share = production["adoption"]["days"][0]["share"].as_f64().unwrap();
    browser
        .wait_text(
            &format!(".adoption[data-release='{release}'][data-channel='production']"),
            &format!("{:.1}%", share * 100.0),
        )
        .await;
    // The times count from the promote (set-active made it today).
    browser
        .wait_text(
            &format!(".adoption[data-release='{release}'][data-channel='production']"),
            &format!(
                "counted from the promote on {}",
                overview["today"].as_str().unwrap()
            ),
        )
        .await;
    let rate = overview["bundles"][0]["failure_rate_week"]
        .as_f64()
        .unwrap();
    assert!(
        (rate - 0.2).abs() < 0.02,
        "20 of 100 reporting devices failed: {rate}"
    );
    browser
        .wait_text(
            "#overview-health [data-bundle='1.0.1']",
            &format!("{:.1}%", rate * 100.0),
        )
        .await;
    browser
        .wait_text("#overview-unregistered", "android 2.0.0 (10)")
        .await;
    browser.screenshots("overview").await;
    let errors = browser
        .script("return window.__capgoErrors", json!([]))
        .await;
    assert_eq!(errors, json!([]), "no script errors or CSP violations");
    // The page is readable at phone width: nothing wider than the screen.
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            json!([]),
        )
        .await;
    assert_eq!(
        overflow,
        json!(true),
        "no horizontal scrolling at the last width"
    );
}
