//! One `petctl apply` is one trace: petctl's own span, scheduler-svc's
//! request and the controller's actions for the change, storage-svc making
//! the claim, identity-svc issuing the identity, and the node agent
//! starting the pod (attaching the claim, reporting it running), each
//! exported by its own process over OTLP to a receiver this test runs.
//!
//! The trace crosses processes through the W3C `traceparent`: on every
//! gRPC call (petctl's and the services' `Outgoing` interceptor), and
//! stored with the set (the apply's context, picked up by the leader's
//! controller) and with the pod (the create action's, picked up by the
//! agent).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use petset_e2e::local::LocalStack;
use petset_e2e::{Petctl, binary, free_port};

/// One span as received: (trace id in hex, the exporting service, name,
/// start in ns since the epoch).
type Received = (String, String, String, u64);

/// An OTLP/gRPC trace receiver that keeps every span.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((trace, service.clone(), span.name, span.start_time_unix_nano));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const MANIFEST: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: traced}
spec:
  serviceName: traced
  replicas: 1
  selector: {matchLabels: {app: traced}}
  template:
    metadata: {labels: {app: traced}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        command: [sleep, '3600']
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Mi}}
";

#[test]
fn one_apply_is_one_trace_across_the_processes_it_reaches() {
    // The receiver, on its own runtime: the rest of the test blocks.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let port = free_port();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("the receiver's port");
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    // Spans leave each process in batches; a short delay keeps the test
    // short (the default is 5 s).
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let stack = LocalStack::start_with("10.79", 3, &env);
    let petctl = Petctl {
        program: binary("petctl"),
        server: stack.scheduler(0),
    };

    // scripts/up's own applies are traced too: ours is the one that
    // starts from now on.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut child = Command::new(&petctl.program)
        .args(["--server", &petctl.server, "apply", "-f", "-"])
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("petctl starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(MANIFEST.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The trace petctl's apply started, and what each process did in it.
    let wanted = [
        ("petctl", "petctl apply"),
        ("scheduler-svc", "ApplyStatefulSet"),
        ("scheduler-svc", "statefulset action"),
        ("storage-svc", "EnsureClaims"),
        ("identity-svc", "IssueIdentity"),
        ("node-agent", "start pod"),
        ("storage-svc", "AttachVolume"),
        ("scheduler-svc", "ReportPodStatus"),
    ];
    let has = |by_service: &BTreeMap<String, BTreeSet<String>>, service: &str, name: &str| {
        by_service
            .get(service)
            .is_some_and(|names| names.iter().any(|n| n.contains(name)))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (trace, by_service) = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let apply = spans.iter().find(|(_, service, name, start)| {
            service == "petctl" && name == "petctl apply" && *start >= before
        });
        if let Some((trace, _, _, _)) = apply {
            let mut by_service: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (t, service, name, _) in &spans {
                if t == trace {
                    by_service
                        .entry(service.clone())
                        .or_default()
                        .insert(name.clone());
                }
            }
            if wanted.iter().all(|(s, n)| has(&by_service, s, n)) {
                break (trace.clone(), by_service);
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace} reached only {by_service:?}"
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "no `petctl apply` span received; {} spans",
                spans.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("trace {trace}: {by_service:#?}");
    assert!(by_service.len() >= 4, "{by_service:?}");
    // Only this apply: scripts/up's example (volumes, a service) is not in it.
    assert!(
        !has(&by_service, "storage-svc", "ApplyVolume"),
        "{by_service:?}"
    );
    drop(stack);
}
