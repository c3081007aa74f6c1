//! The web UI in a real browser (Debian's Chromium, driven over the W3C WebDriver protocol by
//! chromedriver) against the built binary: log in, upload bundles, create a release, promote
//! it, see errors shown in the page, log out. Screenshots of the main pages at desktop and phone
//! width go to target/ui-screenshots/.

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
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no element {css:?}"
            );
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

    async fn screenshot(&self, name: &str, width: u32, height: u32) {
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
    browser.wait_text("h1", "Releases").await;

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
        ("/ui/login", "Releases", ""),
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
    for _ in 0..6 {
        browser.press_tab(1).await;
        walked.push(browser.focused().await);
    }
    assert_eq!(
        walked,
        [
            "nav-releases",
            "nav-bundles",
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
    browser.wait_text("h1", "Releases").await;
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
