//! The built binary on real sockets: the README walk-through, restarts, start-up errors,
//! shutdown, interrupted uploads and what a crash leaves behind.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn walkthrough_then_restart_keeps_everything() {
    let data = tempfile::tempdir().unwrap();
    // No PUBLIC_BASE_URL: download URLs follow the port actually bound.
    let server = ServerProcess::start(data.path(), &[]);
    let token_file = data.path().join("management-api-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        server.log_text().contains(&token),
        "the generated token is printed once"
    );
    let client = Client::new(&server, &token);

    let (status, builtin) = client.upload(APP_ID, "1.0.0", web_bundle("builtin")).await;
    assert_eq!(status, 200, "{builtin}");
    let next_zip = web_bundle("next");
    let (status, next) = client.upload(APP_ID, "1.0.1", next_zip.clone()).await;
    assert_eq!(status, 200, "{next}");
    let (status, release) = client
        .manage(
            "releases.create",
            json!({"platform": "android", "app_id": APP_ID, "version_name": "1.0.0",
                   "version_code": "10", "builtin_bundle_id": builtin["bundle"]["id"]}),
        )
        .await;
    assert_eq!(status, 200, "{release}");
    let device = device_body("builtin", "8.51.14");
    assert_eq!(
        client.device("/updates", &device).await.1["kind"],
        "up_to_date"
    );
    let (status, _) = client
        .manage(
            "releases.set-active",
            json!({"release_id": release["release"]["id"], "bundle_id": next["bundle"]["id"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = client.device("/updates", &device).await;
    assert_eq!(status, 200);
    assert_update_answer(&answer);
    let port = client.server_public.rsplit(':').next().unwrap();
    let expected_prefix = format!("http://localhost:{port}/files/");
    assert!(
        answer["url"]
            .as_str()
            .unwrap()
            .starts_with(&expected_prefix),
        "{answer}"
    );
    let downloaded = client.download(answer["url"].as_str().unwrap()).await;
    assert_eq!(downloaded, next_zip);
    assert_eq!(
        sha256_hex(&downloaded),
        answer["checksum"].as_str().unwrap()
    );

    assert!(server.stop().success(), "SIGTERM stops it cleanly");

    let again = ServerProcess::start(data.path(), &[]);
    assert!(
        !again.log_text().contains(&token),
        "the token is not printed again"
    );
    let client = Client::new(&again, &token);
    assert_eq!(
        client.list("bundles.list").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, answer) = client.device("/updates", &device).await;
    assert_eq!(answer["version"], "1.0.1");
    let wrong = Client::new(&again, "not-the-token");
    let response = wrong
        .http
        .get(format!("{}/api/v1/releases.list", again.management_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn large_upload_streams_through() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let client = Client::new(&server, API_KEY);
    let noise = incompressible(24 << 20);
    let zip = zip_of(&[("index.html", b"<html/>"), ("assets/big.bin", &noise)]);
    let (status, body) = client.upload(APP_ID, "big", zip.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bundle"]["size"], zip.len());
    assert_eq!(body["bundle"]["sha256"], sha256_hex(&zip));
    let downloaded = client
        .download(body["bundle"]["public_download_url"].as_str().unwrap())
        .await;
    assert_eq!(downloaded.len(), zip.len());
}

#[test]
fn invalid_configuration_stops_start_up_naming_key_and_value() {
    let data = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_capgo-server"));
        command
            .env_clear()
            .env("DATA_DIR", data.path())
            .current_dir(data.path())
            .args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let output = run(&[("CACHE_RESULT_DURATION", "10 minutes")], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CACHE_RESULT_DURATION") && stderr.contains("10 minutes"),
        "{stderr}"
    );

    let output = run(&[("CAPGO_USER_PORT", "80000")], &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("80000"));

    let config = data.path().join("custom.yml");
    std::fs::write(&config, "limit_request_per_minute: lots\n").unwrap();
    let output = run(&[], &["--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LIMIT_REQUEST_PER_MINUTE") && stderr.contains("lots"),
        "{stderr}"
    );

    let output = run(&[], &["--config", "/nonexistent/config.yml"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/config.yml"));

    let output = run(
        &[("MONGO_CONNECTION_STRING", "mongodb://localhost:27017")],
        &[],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("MONGO_CONNECTION_STRING"));

    let output = run(&[], &["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("serve") && help.contains("migrate") && help.contains("--config"),
        "{help}"
    );

    let output = run(&[], &["migrate"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(data.path().join("capgo.db").exists());
}

#[test]
fn config_file_is_read_from_the_working_directory() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("config")).unwrap();
    std::fs::write(
        data.path().join("config/config.yml"),
        "management_api_tokens:\n  - from-the-config-file\n",
    )
    .unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let response = get_status(
        &format!("{}/api/v1/releases.list", server.management_url),
        "from-the-config-file",
    );
    assert_eq!(response, 200);
    assert!(
        !data.path().join("management-api-token").exists(),
        "no token generated when one is configured"
    );
}

/// The status of a GET over a plain socket (this test is synchronous).
fn get_status(url: &str, key: &str) -> u16 {
    let (address, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {address}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let address = server
        .management_url
        .trim_start_matches("http://")
        .to_string();
    let head = multipart_body(&[
        ("app_id", Part::Text(APP_ID)),
        ("version_name", Part::Text("cut")),
    ]);
    let head = &head[..head.len() - format!("--{BOUNDARY}--\r\n").len()];
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /api/v1/bundles.upload HTTP/1.1\r\nHost: {address}\r\nx-api-key: {API_KEY}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 50000000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(head).unwrap();
    write!(stream, "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.zip\"\r\n\r\n").unwrap();
    stream.write_all(&incompressible(2 << 20)).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    // The server notices the disconnect and drops the staging file.
    let mut staged = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        staged = list_files(&data.path().join("staging"));
        if staged.is_empty() {
            break;
        }
    }
    assert!(staged.is_empty(), "{staged:?}");
    let client = Client::new(&server, API_KEY);
    assert!(client.list("bundles.list").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(list_files(&data.path().join("blobs")).is_empty());
    // And the server still works.
    let (status, _) = client.upload(APP_ID, "after", web_bundle("after")).await;
    assert_eq!(status, 200);
}

#[test]
fn leftovers_of_a_crash_are_cleaned_at_start() {
    let data = tempfile::tempdir().unwrap();
    for folder in ["staging", "blobs/bundles"] {
        std::fs::create_dir_all(data.path().join(folder)).unwrap();
    }
    std::fs::write(
        data.path().join("staging/6b0948b16ded8159d5dfe8ce.part"),
        b"half an upload",
    )
    .unwrap();
    std::fs::write(
        data.path()
            .join("blobs/bundles/6b0948b16ded8159d5dfe8cf.zip"),
        b"stored, never recorded",
    )
    .unwrap();
    let server = ServerProcess::start(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    assert!(list_files(&data.path().join("staging")).is_empty());
    assert!(list_files(&data.path().join("blobs")).is_empty());
    let mut log = String::new();
    for _ in 0..20 {
        log = server.log_text();
        if log.contains("orphaned") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log.contains("orphaned") && log.contains("interrupted uploads"),
        "{log}"
    );
}

#[test]
fn one_process_per_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let output = Command::new(env!("CARGO_BIN_EXE_capgo-server"))
        .env_clear()
        .env("DATA_DIR", data.path())
        .env("CAPGO_USER_PORT", "0")
        .env("CAPGO_MANAGEMENT_PORT", "0")
        .current_dir(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another capgo-server process is using the data folder"),
        "{stderr}"
    );
    assert!(first.stop().success());
}

#[test]
fn a_slow_device_request_is_cut_off_with_the_device_error_shape() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("DEVICE_REQUEST_TIMEOUT", "1s"),
        ],
    );
    let address = server.public_url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Headers promise 100 bytes; 10 arrive, then the client stalls.
    write!(stream, "POST /updates HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"app_id\":").unwrap();
    let started = std::time::Instant::now();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("\"error\":\"request_timeout\""),
        "{response}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after about a second"
    );
}

/// Reads until the server closes the connection (or `limit` passes); what it sent, and when.
fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> (String, Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            // Reset by the server counts as closed; a read timeout means it stayed open.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open after {limit:?}: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_idle_and_oversized_headers_cannot_hold_connections() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("HTTP_HEADER_TIMEOUT", "1s"),
            ("HTTP_MAX_HEADER_SIZE", "16KiB"),
            // 100 connections from one address: the header timeout is what is tested here.
            ("MAX_CONNECTIONS_PER_IP", "0"),
        ],
    );
    for url in [&server.public_url, &server.management_url] {
        let address = url.trim_start_matches("http://").to_string();

        // Slowloris: 100 clients send half a request line and stall; all are closed in time,
        // and a normal request meanwhile is answered.
        let mut stalled: Vec<std::net::TcpStream> = (0..100)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(&address).unwrap();
                write!(s, "POST /updates HTTP/1.1\r\nHost: {address}\r\nX-Slow: ").unwrap();
                s
            })
            .collect();
        assert_eq!(get_status(&format!("{url}/_healthz"), API_KEY), 200);
        for stream in &mut stalled {
            let (_, took) = read_until_closed(stream, Duration::from_secs(5));
            assert!(took < Duration::from_secs(5));
        }

        // An idle keep-alive connection is closed after the same time.
        let mut idle = std::net::TcpStream::connect(&address).unwrap();
        write!(idle, "GET /_healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
        let (answer, took) = read_until_closed(&mut idle, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            took >= Duration::from_millis(800),
            "kept open while idle: {took:?}"
        );

        // Headers over the limit: 431, and nothing is read past them.
        let mut big = std::net::TcpStream::connect(&address).unwrap();
        let filler = "a".repeat(20 * 1024);
        write!(
            big,
            "GET /_healthz HTTP/1.1\r\nHost: {address}\r\nX-Filler: {filler}\r\n\r\n"
        )
        .unwrap();
        let (answer, _) = read_until_closed(&mut big, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    assert!(server.stop().success());
}

#[tokio::test]
async fn sigkill_during_uploads_leaves_no_half_record_and_no_orphan_file() {
    let data = tempfile::tempdir().unwrap();
    let env = [("MANAGEMENT_API_TOKENS", API_KEY)];
    let mut attempted = 0;
    // Kills land at different points: while bodies stream in, while zips are checked, while
    // files are moved and records written.
    for (round, after_ms) in [15u64, 40, 80, 150, 300, 600].into_iter().enumerate() {
        let server = start_with_public_url(data.path(), &env);
        let uploads = (0..3)
            .map(|i| {
                (
                    format!("{round}.{i}.0"),
                    sized_bundle(&format!("{round}-{i}"), 6 << 20),
                )
            })
            .collect();
        attempted += 3;
        kill_during_uploads(server, uploads, Duration::from_millis(after_ms)).await;
    }
    let server = start_with_public_url(data.path(), &env);
    let recorded = assert_every_record_has_its_bytes(&server).await;
    eprintln!(
        "{} of {attempted} uploads were recorded before their kill",
        recorded.len()
    );
    assert!(recorded.len() < attempted, "some kills landed mid-upload");
    let blobs = data.path().join("blobs");
    assert_eq!(
        list_files(&blobs.join("bundles")).len(),
        recorded.len(),
        "one stored zip per record, no orphans"
    );
    // Each bundle's files are stored by content: its own index.html, and the noise every
    // bundle of the same size shares. No file object is left that no bundle uses.
    let mut expected: Vec<String> = recorded
        .iter()
        .map(|version| {
            let marker = version.strip_suffix(".0").unwrap().replace('.', "-");
            blobs
                .join("files")
                .join(sha256_hex(format!("<html>{marker}</html>").as_bytes()))
                .display()
                .to_string()
        })
        .collect();
    if !recorded.is_empty() {
        let noise = sha256_hex(&incompressible(6 << 20));
        expected.push(blobs.join("files").join(noise).display().to_string());
    }
    expected.sort();
    let mut files = list_files(&blobs.join("files"));
    files.sort();
    let extra: Vec<&String> = files.iter().filter(|f| !expected.contains(f)).collect();
    let missing: Vec<&String> = expected.iter().filter(|f| !files.contains(f)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "after the sweep, every file object has a bundle: extra {extra:?}, missing {missing:?}"
    );
    assert!(list_files(&data.path().join("staging")).is_empty());
    // The catalog still works, including for versions whose upload was cut.
    let client = Client::new(&server, API_KEY);
    let (status, body) = client.upload(APP_ID, "0.0.0", web_bundle("after")).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.stop().success());
}

#[tokio::test]
async fn secrets_stay_out_of_json_logs_and_data_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    // A folder made by hand with the usual umask: made private at start.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProcess::start(&data, &[("LOG_FORMAT", "json")]);
    let token_file = data.join("management-api-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let log = server.log_text();
    assert!(
        !log.contains(&token),
        "a log collector never sees it: {log}"
    );
    assert!(log.contains("management-api-token"), "the file is named");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "DATA_DIR");
    assert_eq!(mode(&data.join("capgo.db")), 0o600, "the database");
    assert_eq!(mode(&token_file), 0o600, "the token");
    let list = format!("{}/api/v1/bundles.list", server.management_url);
    assert_eq!(get_status(&list, &token), 200);
    assert!(server.stop().success());

    // A config error about the tokens never repeats them.
    let output = Command::new(env!("CARGO_BIN_EXE_capgo-server"))
        .env_clear()
        .env("MANAGEMENT_API_TOKENS", "a-long-secret-token,tiny1")
        .env("DATA_DIR", parent.path().join("other"))
        .current_dir(parent.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MANAGEMENT_API_TOKENS"), "{stderr}");
    assert!(!stderr.contains("a-long-secret-token"), "{stderr}");
}

/// Connects to `url`'s host and asks for its path, then never reads.
fn stalled_download(url: &str) -> std::net::TcpStream {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let address = host.replace("localhost", "127.0.0.1");
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    // Over the descriptor budget the server closes at once: the write may fail, which the
    // caller sees as a connection closed with nothing received.
    let _ = write!(stream, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
}

/// Reads `stream` to its end: how many bytes came before the server closed it (`None`: it
/// stayed open for a minute).
fn bytes_until_closed(stream: &mut std::net::TcpStream) -> Option<usize> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(total),
            Err(_) => return None,
        }
    }
}

/// The status of a GET, `None` when the server closed the connection without answering.
fn try_status(url: &str) -> Option<u16> {
    let (address, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn stalled_downloads_cannot_starve_the_server_of_file_descriptors() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    // 256 descriptors, soft and hard: the server cannot raise them.
    let server = ServerProcess::start_wrapped(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("HTTP_WRITE_STALL_TIMEOUT", "2s"),
            ("MAX_CONNECTIONS_PER_IP", "0"),
        ],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let client = Client::new(&server, API_KEY);
    let (status, uploaded) = client
        .upload(APP_ID, "1.0.0", sized_bundle("big", 20 << 20))
        .await;
    assert_eq!(status, 200, "{uploaded}");
    let url = uploaded["bundle"]["public_download_url"]
        .as_str()
        .unwrap()
        .to_string();

    let size = 20 << 20;
    let mut stalled: Vec<_> = (0..150).map(|_| stalled_download(&url)).collect();
    // The management port answers while they hang.
    for _ in 0..3 {
        assert_eq!(
            try_status(&format!("{}/_healthz", server.management_url)),
            Some(200)
        );
    }
    // Well past HTTP_WRITE_STALL_TIMEOUT: every stalled download was cut (those over the
    // descriptor budget at once), none delivered the whole bundle.
    std::thread::sleep(Duration::from_secs(15));
    for stream in &mut stalled {
        let received = bytes_until_closed(stream).expect("closed by the server");
        assert!(
            received < size,
            "a stalled download was not cut: {received}"
        );
    }
    assert_eq!(
        try_status(&format!("{}/_healthz", server.public_url)),
        Some(200)
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_device_connections() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("MAX_CONNECTIONS_PER_IP", "4"),
        ],
    );
    let address = server.public_url.trim_start_matches("http://").to_string();
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    // Accepted, then closed at once: the fifth gets no answer.
    assert_eq!(try_status(&format!("{}/_healthz", server.public_url)), None);
    drop(held);
    let mut attempts = 0;
    while try_status(&format!("{}/_healthz", server.public_url)) != Some(200) {
        attempts += 1;
        assert!(attempts < 100, "places are freed when connections close");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of `request_line` (with `body`) sent from the loopback address `from`.
#[cfg(target_os = "linux")]
async fn status_from_address(url: &str, from: [u8; 4], request_line: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: {address}\r\nx-forwarded-for: 198.51.100.7\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The rate limit follows each connection's peer address on both ways a device request is
/// answered: `POST /updates` (the port's own dispatch) and every other route (the router),
/// which share one bucket per address; a forged `X-Forwarded-For` from an untrusted peer is
/// ignored. (Linux: any 127.0.0.0/8 address is a local one to connect from.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_device_rate_limit_follows_each_connections_peer() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "3"),
        ],
    );
    let url = &server.public_url;
    let check = "POST /updates";
    let channel = "PUT /channel_self";
    let device = json!({"app_id": "com.example.app", "device_id": "a", "platform": "ios",
        "version_build": "1.0.0", "version_code": "1"})
    .to_string();
    let (busy, other) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    for _ in 0..3 {
        assert_eq!(status_from_address(url, busy, check, &device).await, 200);
    }
    assert_eq!(status_from_address(url, busy, check, &device).await, 429);
    assert_eq!(status_from_address(url, busy, channel, &device).await, 429);
    assert_eq!(status_from_address(url, other, check, &device).await, 200);
    assert_ne!(status_from_address(url, other, channel, &device).await, 429);
    assert_eq!(status_from_address(url, other, check, &device).await, 200);
    assert_eq!(status_from_address(url, other, channel, &device).await, 429);
}
