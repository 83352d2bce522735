//! What every call between petset services carries: a deadline the callee
//! is told of, and the caller's trace context.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use petset_core::serve::{CALL_DEADLINE, lazy_channel};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument as _;
use tracing::instrument::WithSubscriber as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// A health server on a free loopback port that records each request's
/// headers.
async fn recording_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let layer = tower::layer::layer_fn(move |inner| {
        let record = record.clone();
        tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            record.lock().unwrap().push(request.headers().clone());
            let mut inner = tonic::service::Routes::clone(&inner);
            async move { tower::Service::call(&mut inner, request).await }
        })
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (address, seen)
}

#[tokio::test]
async fn a_call_carries_its_deadline_and_the_callers_trace() {
    let (address, seen) = recording_server().await;
    let mut client = HealthClient::new(lazy_channel("test-addr", &address).unwrap());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let trace_id = async {
        let span = tracing::info_span!("caller");
        let trace_id = span.context().span().span_context().trace_id();
        client
            .check(HealthCheckRequest::default())
            .instrument(span)
            .await
            .expect("the server answers");
        trace_id
    }
    .with_subscriber(subscriber)
    .await;
    let headers = seen.lock().unwrap().pop().expect("one request seen");
    let timeout = headers["grpc-timeout"].to_str().unwrap();
    assert_eq!(
        timeout,
        format!("{}u", CALL_DEADLINE.as_micros()),
        "the callee is told the deadline (gRPC's microseconds)"
    );
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent} continues trace {trace_id}"
    );

    // Outside any trace, nothing is invented.
    client
        .check(HealthCheckRequest::default())
        .await
        .expect("the server answers");
    let headers = seen.lock().unwrap().pop().expect("one request seen");
    assert!(headers.contains_key("grpc-timeout"));
    assert!(!headers.contains_key("traceparent"));
}
