//! Logs and traces. Logs go to stdout as text or JSON (LOG_FORMAT; RUST_LOG sets the level).
//! Traces are exported over OTLP/HTTP (protobuf) when the standard OTEL_EXPORTER_OTLP_ENDPOINT
//! (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and are off otherwise. Every request runs in
//! a span whose `trace_id` appears in its log lines (JSON: in `span.trace_id`), continuing a
//! W3C `traceparent` from the caller when tracing is on.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether traces are exported: decided once at start-up by [`init`].
static TRACING_ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

pub fn traces_exported() -> bool {
    TRACING_ON.get().copied().unwrap_or(false)
}

/// Flushes and stops trace export at shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocking: it waits for the last batch, which is sent on this runtime.
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = result {
                eprintln!("capgo-server: could not flush traces: {e}");
            }
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber; traces are sent from `runtime`.
pub fn init(format: LogFormat, runtime: &tokio::runtime::Handle) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let (provider, export_error) = if otlp_configured() {
        match tracer_provider(runtime) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("capgo-server")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    let _ = TRACING_ON.set(provider.is_some());
    if let Some(e) = export_error {
        tracing::error!(error = %e, "OTEL_EXPORTER_OTLP_ENDPOINT is set but trace export cannot start; traces are off");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn tracer_provider(runtime: &tokio::runtime::Handle) -> Result<SdkTracerProvider, String> {
    crate::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient {
            http,
            runtime: runtime.clone(),
        })
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("capgo-server");
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The exporter's HTTP client: the server's own reqwest client, run on the server's runtime
/// (the batch processor calls it from its own thread, where no runtime is running).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let response = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, reqwest::Error>(answer)
        });
        Ok(sent.await??)
    }
}
