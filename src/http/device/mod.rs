//! The device API: what `@capgo/capacitor-updater` calls (see `docs/protocol.md`).

mod channel_self;
mod files;
mod manifest_size;
mod stats;
mod updates;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use bytes::BytesMut;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use tokio::time::error::Elapsed;
use tokio::time::Timeout;
use tower::Service;
use tracing::Instrument;

use super::observe;
use super::rate_limit::refuse_if_limited;
use super::serve::ConnectionService;
use super::AppState;
use crate::catalog::CatalogError;
use crate::domain::bundle::FILES_ROUTE_PREFIX;
use crate::domain::device::{DeviceFields, DeviceInfo, DeviceRefusal};
use crate::domain::device_object::DeviceObject;
use crate::error::Chain;

/// Largest device request body: an InfoObject is well under 2 KiB.
const MAX_DEVICE_BODY: usize = 64 * 1024;
/// Largest `/stats` body: 200 queued events with metadata.
const MAX_STATS_BODY: usize = 4 * 1024 * 1024;
/// Largest `/updates/manifest_size` body: a manifest of the most files one lists.
const MAX_MANIFEST_SIZE_BODY: usize = 4 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let limited = rate_limited(
        Router::new()
            .route(UPDATES_ROUTE, post(updates::check_for_update).get(ok))
            .route(
                "/channel_self",
                post(channel_self::set_channel)
                    .put(channel_self::get_channel)
                    .get(channel_self::list_channels)
                    .delete(channel_self::unset_channel),
            )
            .route("/updates/manifest_size", post(manifest_size::sizes)),
        &state,
    );
    let stats = Router::new()
        .route("/stats", post(stats::record).get(ok))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_duration,
        ));
    Router::new()
        .merge(limited)
        .merge(stats)
        .route("/ok", get(ok))
        .route(
            &format!("{FILES_ROUTE_PREFIX}{{*key}}"),
            get(files::download),
        )
        .merge(super::health_routes())
        .fallback(not_found)
        .with_state(state)
}

/// The update check's route.
const UPDATES_ROUTE: &str = "/updates";

/// The device API as the device port serves it: `POST /updates`, which every launch and
/// foreground of every device sends, is answered without the router, through the same steps
/// as its route (observation, rate limit and timeout, body limit, handler); every other
/// request goes through `routes`. This skips the router's path matching and its per-request
/// boxing and cloning of layered services (BENCHMARKS.md, "The device check's cost"). A layer
/// added to [`router`] does not reach `POST /updates`: add its step to `call` too.
#[derive(Clone)]
pub struct DeviceApi {
    state: AppState,
    routes: Router,
    /// The connection's peer, when made by [`ConnectionService::for_peer`]: `POST /updates`
    /// reads it here, other routes as the `ConnectInfo` extension it adds for them (without
    /// a peer, as tests drive it, both read the request's extensions).
    peer: Option<SocketAddr>,
}

impl DeviceApi {
    pub fn new(state: AppState) -> DeviceApi {
        DeviceApi {
            routes: observe::observed_router("device", router(state.clone())),
            state,
            peer: None,
        }
    }

    /// Who sent `request`: its connection's peer, or a trusted proxy's client.
    fn client_of(&self, request: &Request) -> IpAddr {
        match self.peer {
            Some(peer) => self.state.client_ip.resolve(peer.ip(), request.headers()),
            None => self.state.client_ip.of_request(request),
        }
    }
}

impl ConnectionService for DeviceApi {
    type Service = DeviceApi;

    fn for_peer(&self, peer: SocketAddr) -> DeviceApi {
        DeviceApi {
            peer: Some(peer),
            ..self.clone()
        }
    }
}

impl Service<Request> for DeviceApi {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if request.method() != Method::POST || request.uri().path() != UPDATES_ROUTE {
            if let Some(peer) = self.peer {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            return Box::pin(self.routes.call(request));
        }
        let state = self.state.clone();
        let client = self.client_of(&request);
        // The steps of `guard_device_request` inside those of the observation layer, written
        // out: one future for the whole check instead of one nested future per step, each
        // moved into its parent.
        Box::pin(async move {
            let observation = observe::Observation::start("device", UPDATES_ROUTE, &request);
            let response = match refuse_if_limited(&state, client) {
                Some(refused) => refused,
                None => {
                    let check = limited_in_time(&state, updates::check_request(&state, request));
                    or_timed_out(match observation.span() {
                        Some(span) => check.instrument(span.clone()).await,
                        None => check.await,
                    })
                }
            };
            observation.finish(&response);
            Ok(response)
        })
    }
}

/// Device routes under the per-address rate limit and the request timeout (one layer).
fn rate_limited(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        state.clone(),
        guard_device_request,
    ))
}

/// The rate limit of the request's address, then the answer within the request timeout (the
/// device port's `POST /updates` takes the same steps in `DeviceApi::call`).
async fn guard_device_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let client = state.client_ip.of_request(&request);
    if let Some(refused) = refuse_if_limited(&state, client) {
        return refused;
    }
    or_timed_out(limited_in_time(&state, next.run(request)).await)
}

/// The request timeout as a layer (`/stats`, which has its own per-event limit).
async fn limit_duration(State(state): State<AppState>, request: Request, next: Next) -> Response {
    or_timed_out(limited_in_time(&state, next.run(request)).await)
}

/// A device request (body included) must arrive and be answered within
/// DEVICE_REQUEST_TIMEOUT, so slow clients cannot hold connections; bundle downloads are
/// exempt (slow mobile networks). [`or_timed_out`] gives the answer.
fn limited_in_time<F: Future<Output = Response>>(state: &AppState, answer: F) -> Timeout<F> {
    tokio::time::timeout(state.device_request_timeout, answer)
}

/// The answer, or past the request timeout the device error shape.
fn or_timed_out(answer: Result<Response, Elapsed>) -> Response {
    answer.unwrap_or_else(|_| {
        device_error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long to arrive; send it again",
        )
    })
}

async fn ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> Response {
    device_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A device-facing error outside `/updates`: `{error, message}`.
pub(crate) fn device_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

/// A body of at most `LIMIT` bytes read leniently: whatever the Content-Type, and with any
/// problem (too large, unreadable) kept as a refusal for the handler to answer in its
/// endpoint's shape.
pub struct DeviceBytes<const LIMIT: usize = MAX_DEVICE_BODY>(pub Result<Bytes, DeviceRefusal>);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for DeviceBytes<LIMIT> {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(DeviceBytes(read_body(request, LIMIT).await))
    }
}

async fn read_body(request: Request, limit: usize) -> Result<Bytes, DeviceRefusal> {
    collect_at_most(request, limit).await.map_err(|error| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        let mut too_large = false;
        while let Some(e) = cause {
            too_large |= e.is::<LengthLimitError>();
            cause = e.source();
        }
        DeviceRefusal::invalid(if too_large {
            "the request body is too large".to_string()
        } else {
            format!("the request body could not be read: {error}")
        })
    })
}

/// The body's data (trailers ignored), at most `limit` bytes. A body that arrives in one frame,
/// as a device's does, is returned as that frame, with no buffer list or copy.
async fn collect_at_most(request: Request, limit: usize) -> Result<Bytes, axum::BoxError> {
    let mut body = Limited::new(request.into_body(), limit);
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if first.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

/// [`DeviceBytes`] as JSON (empty or not JSON: a refusal too).
pub struct DeviceBody<const LIMIT: usize = MAX_DEVICE_BODY>(pub Result<Value, DeviceRefusal>);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for DeviceBody<LIMIT> {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(DeviceBytes(bytes)) = DeviceBytes::<LIMIT>::from_request(request, state).await;
        Ok(DeviceBody(bytes.and_then(|bytes| parse_json_body(&bytes))))
    }
}

/// The InfoObject of an `/updates` body. A flat object (what plugins send) is read in one pass
/// without building a `Value` (the check's hot path); anything else, nested values and syntax
/// errors included, goes through the `Value` parse, so every endpoint refuses the same bodies
/// with the same message (unit tests and the fuzz target compare both reads).
pub enum InfoObject<'a> {
    Flat(DeviceObject<'a>),
    Parsed(Value),
}

impl<'a> InfoObject<'a> {
    pub fn read(bytes: &'a [u8]) -> Result<InfoObject<'a>, DeviceRefusal> {
        match DeviceObject::from_json(bytes) {
            Ok(object) => Ok(InfoObject::Flat(object)),
            Err(_) => parse_json_body(bytes).map(InfoObject::Parsed),
        }
    }

    /// What the body says about the device, borrowed from it.
    pub fn device(&self) -> Result<DeviceInfo<'_>, DeviceRefusal> {
        match self {
            InfoObject::Flat(object) => DeviceInfo::from_fields(&DeviceFields::of(object)),
            InfoObject::Parsed(value) => DeviceInfo::parse(value),
        }
    }
}

/// A device request body as JSON, or the refusal devices get (also the fuzz target's entry).
pub fn parse_json_body(bytes: &[u8]) -> Result<Value, DeviceRefusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DeviceRefusal::invalid(
            "the request body is empty; send the device information as JSON",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| DeviceRefusal::invalid(format!("the request body is not valid JSON: {e}")))
}

/// Turns a catalog failure into a device refusal, logging what devices must not see.
pub(crate) fn server_refusal(error: &CatalogError) -> DeviceRefusal {
    match error {
        CatalogError::Unavailable { .. } => {
            tracing::warn!(error = %Chain(error), "device request failed: storage unavailable");
            DeviceRefusal::failed(
                "server_unavailable",
                "The update server is temporarily unavailable",
            )
        }
        _ => {
            let trace = crate::domain::RecordId::generate();
            tracing::error!(error = %Chain(error), %trace, "device request failed");
            DeviceRefusal::failed(
                "server_error",
                format!("Internal server error (trace {trace})"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed read and the `Value` one give the same device or the same refusal.
    #[test]
    fn both_reads_of_a_device_agree() {
        let device = r#""app_id": "com.example.app", "device_id": "ABC", "platform": "android",
            "version_build": "1.0.0", "version_code": "10", "plugin_version": "8.51.14""#;
        let bodies = [
            format!("{{{device}}}"),
            format!(
                "{{{device}, \"version_name\": \"1.0.\\u0031\", \"defaultChannel\": \"beta\"}}"
            ),
            format!("{{{device}, \"is_emulator\": \"true\", \"is_prod\": false}}"),
            format!("{{{device}, \"version_name\": 1}}"),
            format!("{{{device}, \"version_name\": [\"a\"]}}"),
            format!("{{{device}, \"is_prod\": {{\"nested\": true}}}}"),
            format!("{{{device}, \"app_id\": \"com.example.other\"}}"),
            format!("{{{device}, \"defaultChannel\": \"not a channel!\"}}"),
            format!("{{{device}, \"plugin_version\": \"4.0.0\"}}"),
            format!("  {{{device}}}\n"),
            r#"{"app_id": "com.example.app"}"#.to_string(),
            "{}".to_string(),
            "[]".to_string(),
            "\"text\"".to_string(),
            "".to_string(),
            "   ".to_string(),
            "{oops".to_string(),
            format!("{{{device}}} trailing"),
            format!("{}{{}}{}", "[".repeat(200), "]".repeat(200)),
            // Nested values and exponents the flat read leaves to the Value parse.
            format!("{{{device}, \"x\": [1e400]}}"),
            format!("{{{device}, \"x\": [\"\\ud800\"]}}"),
            format!(
                "{{{device}, \"x\": {}1{}}}",
                "[".repeat(200),
                "]".repeat(200)
            ),
            format!("{{{device}, \"x\": 1e400}}"),
            format!("{{{device}, \"x\": \"\\ud800\"}}"),
        ];
        for body in &bodies {
            crate::fuzzing::compare_both_reads(body.as_bytes());
        }
        let mut not_utf8 = format!("{{{device}, \"version_name\": \"x\"}}").into_bytes();
        let at = not_utf8.len() - 3;
        not_utf8[at] = 0xff;
        assert!(!crate::fuzzing::compare_both_reads(&not_utf8));
        let object = InfoObject::read(bodies[1].as_bytes()).unwrap();
        let read = object.device().unwrap();
        assert!(matches!(object, InfoObject::Flat(_)));
        assert_eq!(
            (read.version_name, read.device_id.as_ref()),
            ("1.0.1", "abc")
        );
    }

    /// Bodies one to four random edits away from a plugin's: both reads still agree, and the
    /// edits reach the flat reader's every branch (strings, escapes, numbers, words, nesting).
    #[test]
    fn both_reads_agree_on_edited_bodies() {
        let plugin_body = br#"{"app_id":"com.example.app","device_id":"4e5f-ab","platform":"ios",
            "version_build":"1.2.0","version_code":"12","version_name":"1.2.3","version_os":"17.1",
            "plugin_version":"8.40.0","custom_id":"","is_emulator":false,"is_prod":true,
            "defaultChannel":"beta","key_id":"ab12","n":-12.5,"z":null}"#;
        let alphabet: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\"",
            b"\\",
            b"\\u00e9",
            b"\\ud800",
            b"u",
            b"e",
            b"E5",
            b"e-2",
            b"E",
            b"-",
            b"+",
            b".",
            b"0",
            b"7",
            b" ",
            b"\n",
            b"\t",
            b"true",
            b"null",
            b"\x00",
            b"\x0c",
            b"\xff",
            "é".as_bytes(),
            b"a",
            b"1e400",
            b"01",
        ];
        // xorshift64*: a fixed seed, so a failure names a body that fails again.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut body = plugin_body.to_vec();
            for _ in 0..=next(4) {
                let at = next(body.len() + 1);
                let piece = alphabet[next(alphabet.len())];
                let (end, piece) = match next(3) {
                    0 => (at, piece),
                    1 => ((at + piece.len()).min(body.len()), piece),
                    _ => ((at + 1 + next(3)).min(body.len()), &b""[..]),
                };
                body.splice(at..end, piece.iter().copied());
            }
            if crate::fuzzing::compare_both_reads(&body) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted > 1_000 && refused > 1_000,
            "{accepted} read, {refused} refused"
        );
    }
}
