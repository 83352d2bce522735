//! Logs, traces and metrics, set up the same way in every service.
//!
//! - Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`, with
//!   no line per DNS query: [`DEFAULT_LOG_FILTER`]), as
//!   text (coloured only when stderr is a terminal) or JSON lines.
//! - Traces: when an OTLP endpoint is configured (`--otlp-endpoint` or the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT`), spans are exported over OTLP/gRPC
//!   and the W3C `traceparent` of each incoming request becomes the parent of
//!   its span, so one request is one trace across the services.
//! - Metrics: a process-wide Prometheus recorder; every service serves it at
//!   `GET /metrics` on its gRPC port.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetryArgs};

/// The log filter when `RUST_LOG` is not set: INFO. DNS queries log at
/// DEBUG (`RUST_LOG=info,identity_svc::dns=debug` is the opt-in query log).
pub const DEFAULT_LOG_FILTER: &str = "info,hickory_proto=warn";

/// Keeps the trace exporter running; flushes it when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs logging, the optional OTLP trace exporter and the metrics
/// recorder for the service `service_name`. Call once, from `main`.
pub fn init(
    service_name: &'static str,
    args: &TelemetryArgs,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let (json, text) = match args.log_format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours for a person at a terminal, none in log files.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            ),
        ),
    };
    let tracer_provider = match &args.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name)));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()
        .map_err(TelemetryError::Subscriber)?;
    metrics_handle();
    Ok(TelemetryGuard { tracer_provider })
}

/// The W3C `traceparent` of the current span, when a trace is being
/// recorded: stored with an object (a set, a pod) so that the work it
/// causes later, in this process or another, joins the same trace.
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by `traceparent` (as
/// [`current_traceparent`] wrote it); a malformed one is ignored.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test harness);
            // then this handle renders an empty page rather than failing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built for the endpoint.
    #[error("building the OTLP exporter for {endpoint}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A log subscriber was installed already.
    #[error("installing the log subscriber")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}
