//! kubia-pet, as in *Kubernetes in Action*: an HTTP server on port 8080.
//! `GET` answers `You've hit <hostname>` and the data stored on the pod's
//! volume; `POST` stores the request body in `/var/data/kubia.txt`.
//!
//! `GET /peers` is the book's kubia-pet-peers: it finds every peer through
//! the cluster DNS (the SRV records of `$PEERS`, by default
//! `_http._tcp.kubia.$POD_NAMESPACE.svc.cluster.local`), asks each one by
//! its DNS name, and answers with the data stored in the whole set.
//!
//! It listens on `$POD_IP:8080` (every address when `POD_IP` is not set);
//! `LISTEN` and `DATA_FILE` override the address and the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::get;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

struct Pet {
    hostname: String,
    data_file: PathBuf,
    peers: String,
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        std::env::var("HOSTNAME").unwrap_or_default()
    } else {
        name
    }
}

async fn read(State(pet): State<Arc<Pet>>) -> String {
    let data = tokio::fs::read_to_string(&pet.data_file)
        .await
        .unwrap_or_else(|_| "No data posted yet".into());
    format!(
        "You've hit {}\nData stored on this pod: {}\n",
        pet.hostname,
        data.trim_end()
    )
}

/// GET from `http://host:port/`, the body as text.
async fn fetch(resolver: &TokioResolver, host: &str, port: u16) -> Result<String, String> {
    let ip = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .next()
        .ok_or("no address")?;
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header(http::header::HOST, host.trim_end_matches('.'))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

async fn peers(State(pet): State<Arc<Pet>>) -> (axum::http::StatusCode, String) {
    let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(resolver) => resolver,
        Err(e) => {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("no resolver: {e}\n"),
            );
        }
    };
    let lookup = match resolver.lookup(pet.peers.as_str(), RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(e) => {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "You've hit {}\nCould not find peers ({}): {e}\n",
                    pet.hostname, pet.peers
                ),
            );
        }
    };
    let mut targets: Vec<(String, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_string(), srv.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    let mut out = format!("You've hit {}\nData stored in the cluster:\n", pet.hostname);
    for (host, port) in targets {
        let answer = match fetch(&resolver, &host, port).await {
            Ok(body) => body
                .lines()
                .find_map(|l| l.strip_prefix("Data stored on this pod: "))
                .unwrap_or("?")
                .to_string(),
            Err(e) => format!("unreachable: {e}"),
        };
        out.push_str(&format!("- {}: {answer}\n", host.trim_end_matches('.')));
    }
    (axum::http::StatusCode::OK, out)
}

async fn store(
    State(pet): State<Arc<Pet>>,
    body: Bytes,
) -> Result<String, (axum::http::StatusCode, String)> {
    if let Some(dir) = pet.data_file.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    tokio::fs::write(&pet.data_file, &body).await.map_err(|e| {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store data in {}: {e}\n", pet.data_file.display()),
        )
    })?;
    println!("New data has been received and stored.");
    Ok(format!("Data stored on pod {}\n", pet.hostname))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = match std::env::var("LISTEN") {
        Ok(addr) => addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("LISTEN={addr:?}: {e}")))?,
        Err(_) => format!(
            "{}:8080",
            std::env::var("POD_IP").unwrap_or_else(|_| "0.0.0.0".into())
        )
        .parse()
        .map_err(|e| std::io::Error::other(format!("POD_IP: {e}")))?,
    };
    let pet = Arc::new(Pet {
        hostname: hostname(),
        data_file: std::env::var("DATA_FILE")
            .unwrap_or_else(|_| "/var/data/kubia.txt".into())
            .into(),
        peers: std::env::var("PEERS").unwrap_or_else(|_| {
            let ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
            format!("_http._tcp.kubia.{ns}.svc.cluster.local.")
        }),
    });
    println!("Kubia server starting on {listen} as {}...", pet.hostname);
    let app = Router::new()
        .route("/", get(read).post(store))
        .route("/peers", get(peers))
        .fallback(get(read).post(store))
        .with_state(pet);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // SIGTERM ends it (after the requests in flight): in its pod's pid
    // namespace it is pid 1, which the kernel gives no default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
            println!("SIGTERM: stopping.");
        })
        .await
}
