//! The connection loop for both ports (instead of `axum::serve`, which exposes no connection
//! settings): HTTP/1.1 with a bound on header size and on the time a client may take to send
//! a request's headers, which also bounds how long an idle keep-alive connection is held. A
//! slow or silent client therefore cannot pin connections; slow bodies are bounded by
//! DEVICE_REQUEST_TIMEOUT on the device API, responses nobody reads by
//! HTTP_WRITE_STALL_TIMEOUT, and the device port's connections by a [`ConnectionGate`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt};

use super::connections::{ConnectionGate, StallGuard};

/// How long in-flight requests may run on after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ConnectionLimits {
    /// Time allowed to send a request's headers, counted from the end of the previous
    /// response on a keep-alive connection.
    pub header_timeout: Duration,
    /// Largest request line plus headers, in bytes; more is answered with 431.
    pub max_header_bytes: usize,
    /// A response write that makes no progress this long ends the connection.
    pub write_stall_timeout: Duration,
    /// Connections admitted per peer address and in total (the device port); others are
    /// closed as soon as they are accepted.
    pub gate: Option<Arc<ConnectionGate>>,
}

/// What answers the requests of one accepted connection: a service that knows the
/// connection's peer address (rate limits and logs need it).
pub trait ConnectionService: Send + Sync + 'static {
    type Service: Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static;

    fn for_peer(&self, peer: SocketAddr) -> Self::Service;
}

/// A router gets the peer as a `ConnectInfo` extension on every request.
impl ConnectionService for Router {
    type Service = <Extension<ConnectInfo<SocketAddr>> as Layer<Router>>::Service;

    fn for_peer(&self, peer: SocketAddr) -> Self::Service {
        Extension(ConnectInfo(peer)).layer(self.clone())
    }
}

/// Serves `service` (a router, or the device API's own dispatch) on `listener` until
/// `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    service: impl ConnectionService,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        // The read buffer bounds the headers too; it must hold at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let permit = match &limits.gate {
            Some(gate) => match gate.admit(peer.ip()) {
                Some(permit) => Some(permit),
                None => {
                    crate::metrics::global().rate_limited();
                    tracing::debug!(%peer, "connection refused: too many open connections");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let stream = StallGuard::new(stream, limits.write_stall_timeout);
        let service =
            service
                .for_peer(peer)
                .map_request(|request: hyper::Request<hyper::body::Incoming>| {
                    request.map(axum::body::Body::new)
                });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log_connection_error(peer, &e);
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running {DRAIN_TIMEOUT:?} after shutdown began were cut");
    }
}

fn log_connection_error(peer: SocketAddr, error: &hyper::Error) {
    if error.is_timeout() {
        tracing::debug!(%peer, "closed a connection that sent no complete request headers in time");
    } else if !error.is_incomplete_message() {
        tracing::debug!(%peer, error = %error, "connection ended with an error");
    }
}
