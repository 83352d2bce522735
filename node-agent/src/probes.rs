//! Readiness and liveness probes, with Kubernetes' semantics: `httpGet`
//! succeeds on a status from 200 to 399, `tcpSocket` when a connection
//! opens, `exec` when the command exits 0; each within `timeoutSeconds`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use petset_proto::v1;
use tokio::net::TcpStream;

use crate::runtime::Exec;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, and why.
    Failure(String),
}

/// Resolves a probe's port: a number or a container port's name.
pub fn port(text: &str, ports: &[v1::ContainerPort]) -> Option<u16> {
    text.parse::<u16>().ok().or_else(|| {
        ports
            .iter()
            .find(|p| p.name == text)
            .map(|p| p.container_port as u16)
    })
}

/// Runs `probe` once against a pod at `ip` whose container has `ports`.
pub async fn run(
    probe: &v1::Probe,
    ip: IpAddr,
    ports: &[v1::ContainerPort],
    exec: &Exec,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1) as u64);
    match tokio::time::timeout(timeout, attempt(probe, ip, ports, exec)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!("timed out after {timeout:?}")),
    }
}

async fn attempt(
    probe: &v1::Probe,
    ip: IpAddr,
    ports: &[v1::ContainerPort],
    exec: &Exec,
) -> Outcome {
    if let Some(http) = &probe.http_get {
        let Some(p) = port(&http.port, ports) else {
            return Outcome::Failure(format!("port {:?} is not a container port", http.port));
        };
        let host = http.host.parse().unwrap_or(ip);
        return http_get(SocketAddr::new(host, p), &http.path).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(p) = port(&tcp.port, ports) else {
            return Outcome::Failure(format!("port {:?} is not a container port", tcp.port));
        };
        return match TcpStream::connect(SocketAddr::new(ip, p)).await {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Failure(format!("dial tcp {ip}:{p}: {e}")),
        };
    }
    if let Some(action) = &probe.exec {
        return match exec.run(&action.command).await {
            Ok(0) => Outcome::Success,
            Ok(code) => Outcome::Failure(format!("command exited with exit status: {code}")),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    Outcome::Failure("the probe has no handler".into())
}

async fn http_get(addr: SocketAddr, path: &str) -> Outcome {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("Get \"http://{addr}{path}\": dial tcp: {e}")),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return Outcome::Failure(format!("Get \"http://{addr}{path}\": {e}")),
        };
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "petset-probe/1")
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        return Outcome::Failure(format!("bad probe path {path:?}"));
    };
    match sender.send_request(request).await {
        Ok(response) if (200..400).contains(&response.status().as_u16()) => Outcome::Success,
        Ok(response) => Outcome::Failure(format!(
            "HTTP probe failed with statuscode: {}",
            response.status().as_u16()
        )),
        Err(e) => Outcome::Failure(format!("Get \"http://{addr}{path}\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn http(port: &str, path: &str) -> v1::Probe {
        v1::Probe {
            http_get: Some(v1::HttpGetAction {
                path: path.into(),
                port: port.into(),
                ..Default::default()
            }),
            timeout_seconds: 1,
            ..Default::default()
        }
    }

    /// A server answering every request with `status`.
    async fn server(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_only() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ports = [v1::ContainerPort {
            name: "http".into(),
            container_port: server(200).await as i32,
            ..Default::default()
        }];
        assert_eq!(
            run(&http("http", "/"), ip, &ports, &Exec::Host(vec![])).await,
            Outcome::Success,
            "by port name"
        );
        let redirect = server(302).await.to_string();
        assert_eq!(
            run(&http(&redirect, "/"), ip, &[], &Exec::Host(vec![])).await,
            Outcome::Success
        );
        let failing = server(500).await.to_string();
        let Outcome::Failure(why) =
            run(&http(&failing, "/healthz"), ip, &[], &Exec::Host(vec![])).await
        else {
            panic!("500 passed")
        };
        assert!(why.contains("statuscode: 500"), "{why}");
        let Outcome::Failure(why) = run(&http("nope", "/"), ip, &ports, &Exec::Host(vec![])).await
        else {
            panic!()
        };
        assert!(why.contains("not a container port"), "{why}");
    }

    #[tokio::test]
    async fn tcp_and_exec_probes() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let open = server(200).await.to_string();
        let tcp = |port: &str| v1::Probe {
            tcp_socket: Some(v1::TcpSocketAction { port: port.into() }),
            timeout_seconds: 1,
            ..Default::default()
        };
        assert_eq!(
            run(&tcp(&open), ip, &[], &Exec::Host(vec![])).await,
            Outcome::Success
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port().to_string()
        };
        assert!(matches!(
            run(&tcp(&closed), ip, &[], &Exec::Host(vec![])).await,
            Outcome::Failure(_)
        ));
        let exec = |cmd: &[&str]| v1::Probe {
            exec: Some(v1::ExecAction {
                command: cmd.iter().map(|s| s.to_string()).collect(),
            }),
            timeout_seconds: 1,
            ..Default::default()
        };
        let env = vec![("READY".to_string(), "yes".to_string())];
        assert_eq!(
            run(
                &exec(&["sh", "-c", "test \"$READY\" = yes"]),
                ip,
                &[],
                &Exec::Host(env.clone())
            )
            .await,
            Outcome::Success
        );
        assert!(matches!(
            run(&exec(&["false"]), ip, &[], &Exec::Host(env.clone())).await,
            Outcome::Failure(_)
        ));
        let Outcome::Failure(why) =
            run(&exec(&["sleep", "5"]), ip, &[], &Exec::Host(env.clone())).await
        else {
            panic!()
        };
        assert!(why.contains("timed out"), "{why}");
    }
}
