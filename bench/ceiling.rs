//! The machine's ceiling for the benchmark: the smallest hyper server on the same runtime and
//! HTTP stack as capgo-server, answering every request with one fixed body (a real `/updates`
//! answer, so both send the same bytes). Built and run by `scripts/bench`.
//!
//!     ceiling <port> <body file>

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: ceiling <port> <body file>");
    let body = Bytes::from(
        std::fs::read(args.next().expect("usage: ceiling <port> <body file>"))
            .expect("the body file reads"),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("the port is free");
    println!("ceiling listening on http://127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let body = body.clone();
                async move {
                    // Read the request body, as the real server does.
                    let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(body))
                        .expect("a valid response");
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
