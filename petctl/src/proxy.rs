//! `petctl proxy`: a local port that forwards every request to scheduler-svc's
//! HTTP API, as `kubectl proxy` does, so a person (or curl) reaches pods and
//! services through the API's proxy without handling its address.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
struct Upstream {
    api: String,
    client: Client<HttpConnector, Body>,
}

async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let Ok(uri) = format!("http://{}{path}", up.api).parse::<http::Uri>() else {
        return (StatusCode::BAD_REQUEST, "invalid path\n").into_response();
    };
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    parts.headers.insert(
        header::HOST,
        up.api.parse().expect("an address is a header value"),
    );
    match up
        .client
        .request(http::Request::from_parts(parts, body))
        .await
    {
        Ok(answer) => answer.map(Body::new).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("cannot reach the petset API at {}: {e}\n", up.api),
        )
            .into_response(),
    }
}

/// Serves on `listen` until interrupted.
pub async fn serve(listen: SocketAddr, api: String) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: pick another port with --port"))?;
    out!("Starting to serve on {}", listener.local_addr()?);
    let upstream = Upstream {
        api,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
