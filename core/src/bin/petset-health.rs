//! `petset-health TARGET`: a container health check for images that have no
//! shell. `TARGET` is `http://host:port/path` (healthy on a 2xx answer, as
//! etcd's `/health`) or `host:port` of a petset gRPC service (healthy when
//! `grpc.health.v1` says SERVING). Exits 0 when healthy, 1 otherwise, within
//! three seconds.

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn http(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or("the URL has no host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(uri.path())
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body.to_bytes())
        ))
    }
}

async fn grpc(address: &str) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match answer.status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(target) = std::env::args().nth(1) else {
        eprintln!("usage: petset-health http://HOST:PORT/PATH | HOST:PORT");
        return ExitCode::from(2);
    };
    let check = async {
        if target.starts_with("http://") {
            http(&target).await
        } else {
            grpc(&target).await
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(why)) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: no answer within 3 s");
            ExitCode::FAILURE
        }
    }
}
