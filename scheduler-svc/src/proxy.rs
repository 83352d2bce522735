//! The API server's proxy, as Kubernetes serves it: a pod's port at
//! `/api/v1/namespaces/<ns>/pods/<pod>[:<port>]/proxy/<path>`, and one ready
//! pod of a service (requests spread over them) at
//! `/api/v1/namespaces/<ns>/services/<svc>[:<port>]/proxy/<path>`. Any
//! method; the body and headers pass through, hop-by-hop headers do not.
//!
//! # Guarantees
//! - A request reaches only the pod it names, on a port of that pod: the
//!   target's host is the pod's address from its status, never anything in
//!   the request. Pod and service names must be DNS labels (so an address
//!   is refused), and the path may not hold `.`/`..` segments or encoded
//!   slashes (`%2F`, `%5C`), raw or percent-encoded.
//! - A pod that is not Running and Ready answers 503 with the reason; an
//!   unknown pod or service 404; a service with no ready pod 503.
//! - Request and response bodies are limited to [`BODY_LIMIT`]; a pod that
//!   does not answer within the timeout gets 504.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use petset_core::error::Error;
use petset_core::serve::ServiceChannel;
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::services_client::ServicesClient;

use crate::pods::Pods;

/// Largest request or response body passed through: 10 MiB.
pub const BODY_LIMIT: usize = 10 << 20;

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The proxy's state.
#[derive(Clone)]
pub struct Proxy {
    pods: Pods,
    services: ServicesClient<ServiceChannel>,
    identities: IdentitiesClient<ServiceChannel>,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message.into(),
        "code": status.as_u16(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Splits `name[:port]` and checks the name is a DNS label.
fn name_and_port(text: &str) -> Result<(String, Option<String>), String> {
    let (name, port) = match text.split_once(':') {
        Some((n, p)) => (n, Some(p.to_string())),
        None => (text, None),
    };
    validate::dns1123_label(name).map_err(|why| format!("invalid name {text:?}: {why}"))?;
    if let Some(p) = &port
        && p.parse::<u16>().is_err()
        && validate::iana_svc_name(p).is_err()
    {
        return Err(format!("invalid port {p:?}: a number or a port name"));
    }
    Ok((name.to_string(), port))
}

fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path to send the pod: what follows `/proxy` in the raw request path,
/// refused if it could leave the path it names.
pub fn proxied_path(raw: &str, marker: &str) -> Result<String, String> {
    let rest = raw.split_once(marker).map(|(_, r)| r).unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || rest.contains('\\') {
        return Err("encoded slashes are not allowed in a proxied path".into());
    }
    for segment in rest.split('/') {
        let decoded = percent_decoded(segment);
        if decoded == "." || decoded == ".." {
            return Err("'.' and '..' are not allowed in a proxied path".into());
        }
    }
    Ok(format!("/{rest}"))
}

impl Proxy {
    /// A proxy over `pods`, finding services and peers through identity-svc.
    pub fn new(pods: Pods, identity: ServiceChannel, timeout: Duration) -> Proxy {
        Proxy {
            pods,
            services: ServicesClient::new(identity.clone()),
            identities: IdentitiesClient::new(identity),
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The HTTP routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/namespaces/{ns}/pods/{pod}/proxy", any(pod))
            .route("/api/v1/namespaces/{ns}/pods/{pod}/proxy/", any(pod))
            .route("/api/v1/namespaces/{ns}/pods/{pod}/proxy/{*rest}", any(pod))
            .route("/api/v1/namespaces/{ns}/services/{svc}/proxy", any(service))
            .route(
                "/api/v1/namespaces/{ns}/services/{svc}/proxy/",
                any(service),
            )
            .route(
                "/api/v1/namespaces/{ns}/services/{svc}/proxy/{*rest}",
                any(service),
            )
            .fallback(|| async {
                fail(
                    StatusCode::NOT_FOUND,
                    "the server could not find the requested resource",
                )
            })
            .with_state(self)
    }

    /// Sends `request` to `host:port` at `path`.
    async fn forward(&self, request: Request, authority: String, path: String) -> Response {
        send(&self.client, self.timeout, request, authority, path).await
    }
}

/// Sends `request` to `authority` at `path` (its query kept), within
/// `timeout`, bodies limited to [`BODY_LIMIT`].
pub async fn send(
    client: &Client<HttpConnector, Body>,
    timeout: Duration,
    request: Request,
    authority: String,
    path: String,
) -> Response {
    let too_large = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > BODY_LIMIT);
    if too_large {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        );
    }
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri = match format!("http://{authority}{path}{query}").parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("invalid proxied path: {e}"),
            );
        }
    };
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        authority.parse().expect("an address is a header value"),
    );
    parts.uri = uri;
    let body = Body::new(Limited::new(body, BODY_LIMIT));
    let outgoing = http::Request::from_parts(parts, body);
    let answer = match tokio::time::timeout(timeout, client.request(outgoing)).await {
        Err(_) => {
            return fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the pod at {authority} did not answer within {timeout:?}"),
            );
        }
        Ok(Err(e)) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                format!("error trying to reach {authority}: {e}"),
            );
        }
        Ok(Ok(answer)) => answer,
    };
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let collected = tokio::time::timeout(timeout, Limited::new(body, BODY_LIMIT).collect()).await;
    let bytes = match collected {
        Err(_) => {
            return fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the pod at {authority} did not finish its answer within {timeout:?}"),
            );
        }
        Ok(Err(e)) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the answer from {authority} failed or is larger than {BODY_LIMIT} bytes: {e}"
                ),
            );
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn status_of(e: Error) -> Response {
    match e {
        Error::NotFound { kind, name } => {
            fail(StatusCode::NOT_FOUND, format!("{kind}s {name:?} not found"))
        }
        Error::InvalidArgument(_) => fail(StatusCode::BAD_REQUEST, e.to_string()),
        other => fail(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// What a proxy path names: namespace, object, port (if given) and the
/// path to send it, all checked.
struct Target {
    ns: String,
    name: String,
    port: Option<String>,
    path: String,
}

/// Reads the `{ns}` and `{target}` (`name[:port]`) path parameters and the
/// rest of the raw path; every refusal is a 400 with the reason.
fn target(
    params: &HashMap<String, String>,
    object: &str,
    request: &Request,
) -> Result<Target, String> {
    let ns = params.get("ns").cloned().unwrap_or_default();
    validate::dns1123_label(&ns).map_err(|why| format!("invalid namespace {ns:?}: {why}"))?;
    let (name, port) = name_and_port(params.get(object).map(String::as_str).unwrap_or_default())?;
    let path = proxied_path(request.uri().path(), "/proxy")?;
    Ok(Target {
        ns,
        name,
        port,
        path,
    })
}

async fn pod(
    State(p): State<Proxy>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Response {
    match target(&params, "pod", &request) {
        Ok(t) => proxy_pod(p, t, request).await,
        Err(why) => fail(StatusCode::BAD_REQUEST, why),
    }
}

async fn service(
    State(p): State<Proxy>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Response {
    match target(&params, "svc", &request) {
        Ok(t) => proxy_service(p, t, request).await,
        Err(why) => fail(StatusCode::BAD_REQUEST, why),
    }
}

async fn proxy_pod(p: Proxy, t: Target, request: Request) -> Response {
    let Target {
        ns,
        name,
        port,
        path,
    } = t;
    let (pod, status) = match p.pods.get(&ns, &name).await {
        Ok(x) => x,
        Err(e) => return status_of(e),
    };
    let Some(status) = status.filter(|s| s.phase == "Running" && !s.pod_ip.is_empty()) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "pod {name} is not running (it has not started on node {} yet)",
                pod.value.node
            ),
        );
    };
    if pod.value.deletion.is_some() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pod {name} is terminating"),
        );
    }
    if !status.ready {
        let why = if status.message.is_empty() {
            "its readiness probe has not passed".to_string()
        } else {
            status.message.clone()
        };
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pod {name} is not ready: {why}"),
        );
    }
    let ports: Vec<&v1::ContainerPort> = pod
        .value
        .spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .collect();
    let number = match &port {
        None => ports.first().map(|p| p.container_port as u16).unwrap_or(80),
        Some(text) => match text.parse::<u16>() {
            Ok(n) => n,
            Err(_) => match ports.iter().find(|p| p.name == *text) {
                Some(p) => p.container_port as u16,
                None => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        format!("pod {name} has no port named {text:?}"),
                    );
                }
            },
        },
    };
    p.forward(request, format!("{}:{number}", status.pod_ip), path)
        .await
}

async fn proxy_service(p: Proxy, t: Target, request: Request) -> Response {
    let Target {
        ns,
        name,
        port,
        path,
    } = t;
    let service = match p
        .services
        .clone()
        .get_service(v1::GetServiceRequest {
            namespace: ns.clone(),
            name: name.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            return fail(
                StatusCode::NOT_FOUND,
                format!("services {name:?} not found"),
            );
        }
        Err(s) => return fail(StatusCode::SERVICE_UNAVAILABLE, s.message().to_string()),
    };
    let ports = service.spec.map(|s| s.ports).unwrap_or_default();
    let service_port = match &port {
        None => ports.first(),
        Some(text) => ports
            .iter()
            .find(|p| p.name == *text || p.port.to_string() == *text),
    };
    let Some(service_port) = service_port.cloned() else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {name} has no port {}", port.unwrap_or_default()),
        );
    };
    let peers = match p
        .identities
        .clone()
        .list_peers(v1::ListPeersRequest {
            namespace: ns.clone(),
            service_name: name.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner().peers,
        Err(s) => return fail(StatusCode::SERVICE_UNAVAILABLE, s.message().to_string()),
    };
    let mut ready: Vec<&v1::Peer> = peers.iter().filter(|peer| peer.ready).collect();
    ready.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    if ready.is_empty() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoints available for service {name:?}: no pod behind it is ready"),
        );
    }
    let peer = ready[p.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
    let target_port = if service_port.target_port.is_empty() {
        service_port.port.to_string()
    } else {
        service_port.target_port.clone()
    };
    let number = match target_port.parse::<u16>() {
        Ok(n) => n,
        Err(_) => match peer.ports.iter().find(|p| p.name == target_port) {
            Some(p) => p.port as u16,
            None => {
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("pod {} has no port named {target_port:?}", peer.pod_name),
                );
            }
        },
    };
    p.forward(request, format!("{}:{number}", peer.address), path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        let ok = |raw: &str| proxied_path(raw, "/proxy").unwrap();
        assert_eq!(ok("/api/v1/namespaces/default/pods/kubia-0/proxy"), "/");
        assert_eq!(ok("/api/v1/namespaces/default/pods/kubia-0/proxy/"), "/");
        assert_eq!(
            ok("/api/v1/namespaces/default/pods/kubia-0/proxy/a/b%20c"),
            "/a/b%20c"
        );
        for bad in [
            "/api/v1/namespaces/default/pods/kubia-0/proxy/../../kubia-1/proxy/",
            "/api/v1/namespaces/default/pods/kubia-0/proxy/a/%2e%2e/b",
            "/api/v1/namespaces/default/pods/kubia-0/proxy/a%2Fb",
            "/api/v1/namespaces/default/pods/kubia-0/proxy/a%5cb",
            "/api/v1/namespaces/default/pods/kubia-0/proxy/./x",
        ] {
            assert!(proxied_path(bad, "/proxy").is_err(), "{bad}");
        }
    }

    async fn server(answer: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = stream.read(&mut buf).await;
                    if answer.is_empty() {
                        // Accept and never answer.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let _ = stream.write_all(answer).await;
                    if answer.starts_with(b"HTTP/1.1 200 BIG") {
                        let chunk = vec![b'x'; 1 << 20];
                        for _ in 0..11 {
                            if stream.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn get(path: &str) -> Request {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn slow_pods_time_out_and_sizes_are_bounded() {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let short = Duration::from_millis(300);
        let silent = server(b"").await;
        let r = send(&client, short, get("/"), silent, "/".into()).await;
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let big = server(b"HTTP/1.1 200 BIG\r\ncontent-length: 11534336\r\n\r\n").await;
        let r = send(&client, Duration::from_secs(10), get("/"), big, "/".into()).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let ok =
            server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi").await;
        let r = send(&client, short, get("/x?y=1"), ok.clone(), "/x".into()).await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut huge = get("/");
        huge.headers_mut().insert(
            header::CONTENT_LENGTH,
            (BODY_LIMIT + 1).to_string().parse().unwrap(),
        );
        let r = send(&client, short, huge, ok, "/".into()).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn names_are_labels_not_addresses() {
        assert!(name_and_port("kubia-0").is_ok());
        assert_eq!(
            name_and_port("kubia-0:8080").unwrap().1.as_deref(),
            Some("8080")
        );
        assert_eq!(
            name_and_port("kubia-0:http").unwrap().1.as_deref(),
            Some("http")
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:22",
            "evil.example.com",
            "kubia-0:../x",
            "[::1]",
        ] {
            assert!(name_and_port(bad).is_err(), "{bad}");
        }
    }
}
