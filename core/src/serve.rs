//! The gRPC server every petset service runs: its own services plus
//! `grpc.health.v1`, server reflection (`v1` and `v1alpha`, the one grpcurl
//! 1.8 speaks) and `GET /metrics` in the Prometheus text format, all on one
//! port.
//!
//! Each request gets a span whose parent is the caller's W3C `traceparent`,
//! and is counted and timed per method.

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::propagation::TextMapPropagator as _;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::shutdown::CancellationToken;
use crate::telemetry::metrics_handle;

/// Assembles the services one process serves.
#[derive(Debug)]
pub struct ServiceHost {
    routes: RoutesBuilder,
    health: HealthReporter,
    names: Vec<&'static str>,
}

impl Default for ServiceHost {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceHost {
    /// A host with health and reflection, and no services of its own yet.
    pub fn new() -> Self {
        // Install the recorder before the first request is counted.
        let _ = metrics_handle();
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(petset_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        routes.add_service(
            reflection()
                .build_v1()
                .expect("petset's descriptor set is valid"),
        );
        routes.add_service(
            reflection()
                .build_v1alpha()
                .expect("petset's descriptor set is valid"),
        );
        ServiceHost {
            routes,
            health,
            names: Vec::new(),
        }
    }

    /// Adds one gRPC service; health reports it as serving once the host runs.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled, then lets the
    /// requests in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        for name in &self.names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        let router = self
            .routes
            .routes()
            .into_axum_router()
            .route("/metrics", axum::routing::get(render_metrics))
            .layer(axum::middleware::from_fn(observe));
        let health = self.health.clone();
        let stopping = async move {
            shutdown.cancelled().await;
            // Tell load balancers first, so that new calls go elsewhere.
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
        };
        // Small answers go out at once: without TCP_NODELAY, an answer
        // written in two segments waits for the client's delayed ACK (40 ms).
        let incoming = TcpListenerStream::new(listener).map(|stream| {
            if let Ok(stream) = &stream {
                let _ = stream.set_nodelay(true);
            }
            stream
        });
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(incoming, stopping)
            .await
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

/// Wraps each request in a span (parented on the caller's trace) and records
/// its count and latency per path.
async fn observe(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
    let span = tracing::info_span!("request", otel.name = %path, rpc.method = %path);
    let _ = span.set_parent(parent);
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    let code = grpc_status(&response);
    metrics::counter!("petset_requests_total", "path" => path.clone(), "code" => code).increment(1);
    metrics::histogram!("petset_request_duration_seconds", "path" => path)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The gRPC status a response carries in its headers (trailers-only errors);
/// streamed answers and successes carry theirs in trailers, counted as "0".
fn grpc_status(response: &Response) -> String {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if response.status().is_success() {
            "0"
        } else {
            "http-error"
        })
        .to_string()
}

/// Why a service could not start or keep serving (what its binary reports
/// before it exits).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listening socket could not be bound.
    #[error("cannot bind the {what} address {addr}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting is wrong.
    #[error("setting {setting}: {reason}")]
    Config {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// etcd could not be reached.
    #[error("cannot reach the store")]
    Store(#[source] crate::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
}

/// How long any call from one petset service to another may take before
/// the caller gives up (and the callee, told by `grpc-timeout`, stops).
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long connecting to another service may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How often an idle connection is pinged (HTTP/2 PING), and how long the
/// answer may take before the connection is dropped and made again.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every call from one petset service to another carries: a deadline
/// (`grpc-timeout`, [`CALL_DEADLINE`] unless the call set its own) and the
/// caller's trace context (W3C `traceparent`), so that the callee's span
/// joins the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing;

impl tonic::service::Interceptor for Outgoing {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key("grpc-timeout") {
            request.set_timeout(CALL_DEADLINE);
        }
        inject_trace(request.metadata_mut());
        Ok(request)
    }
}

/// Writes the current span's trace context into `metadata`; nothing when
/// no trace is being recorded.
pub fn inject_trace(metadata: &mut tonic::metadata::MetadataMap) {
    struct Injector<'a>(&'a mut tonic::metadata::MetadataMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut Injector(metadata));
}

/// A channel to another petset service, with [`Outgoing`] on every call.
pub type ServiceChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Outgoing>;

/// A channel to another petset service at `address` (a URL), connected on
/// first use: small messages sent at once (TCP_NODELAY), a connect timeout,
/// HTTP/2 keep-alive pings (a peer that vanished without closing is noticed
/// in seconds, not at the next call's deadline), and [`Outgoing`] on each
/// call. `setting` names the flag the address came from, for the error.
pub fn lazy_channel(setting: &'static str, address: &str) -> Result<ServiceChannel, ServeError> {
    tonic::transport::Endpoint::from_shared(address.to_string())
        .map(|e| {
            let channel = e
                .tcp_nodelay(true)
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_DEADLINE)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
            tonic::service::interceptor::InterceptedService::new(channel, Outgoing)
        })
        .map_err(|e| ServeError::Config {
            setting,
            reason: format!("{address:?} is not a URL: {e}"),
        })
}

/// The opening message of a client stream (exec, port-forward), which must
/// carry its `start` part (`what` says what that names, for the error).
pub async fn opening<T, S>(
    input: &mut tonic::Streaming<T>,
    start: impl FnOnce(T) -> Option<S>,
    what: &str,
) -> Result<S, tonic::Status> {
    input.message().await?.and_then(start).ok_or_else(|| {
        tonic::Status::invalid_argument(format!("start: the first message names {what}"))
    })
}
