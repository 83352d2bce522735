//! petctl's part of a trace: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, one
//! root span per command (`petctl apply`), exported over OTLP/gRPC, whose
//! W3C `traceparent` every request carries — so the services' spans for
//! the command, and the controller's and the agents' work it causes, are
//! one trace.

use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{Ascii, MetadataValue};

/// The command's trace, when one is recorded.
pub struct Trace {
    provider: Option<SdkTracerProvider>,
    context: Context,
    traceparent: Option<MetadataValue<Ascii>>,
}

impl Trace {
    /// Starts the root span `petctl <command>`; nothing when no endpoint
    /// is configured or the exporter cannot be built (petctl runs on,
    /// untraced, and says why).
    pub fn start(command: &str) -> Trace {
        let untraced = Trace {
            provider: None,
            context: Context::new(),
            traceparent: None,
        };
        let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
        else {
            return untraced;
        };
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("warning: not tracing: OTLP exporter for {endpoint}: {e}");
                return untraced;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("petctl")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("petctl");
        let span = tracer
            .span_builder(format!("petctl {command}"))
            .with_attributes([KeyValue::new("petctl.command", command.to_string())])
            .start(&tracer);
        let context = Context::new().with_span(span);
        let mut carrier = std::collections::HashMap::new();
        {
            use opentelemetry::propagation::TextMapPropagator as _;
            opentelemetry_sdk::propagation::TraceContextPropagator::new()
                .inject_context(&context, &mut carrier);
        }
        let traceparent = carrier.get("traceparent").and_then(|t| t.parse().ok());
        Trace {
            provider: Some(provider),
            context,
            traceparent,
        }
    }

    /// What each request carries.
    pub fn interceptor(&self) -> Traceparent {
        Traceparent(self.traceparent.clone())
    }

    /// Ends the root span and sends what is left to send.
    pub fn end(self, failed: bool) {
        let span = self.context.span();
        if failed {
            span.set_status(opentelemetry::trace::Status::error("the command failed"));
        }
        span.end();
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: sending the trace failed: {e}");
        }
    }
}

/// Puts the command's `traceparent` on each request.
#[derive(Debug, Clone, Default)]
pub struct Traceparent(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Traceparent {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("traceparent", value.clone());
        }
        Ok(request)
    }
}
