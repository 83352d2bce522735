//! `petctl port-forward POD [LOCAL:]REMOTE...`: local ports whose every
//! connection is relayed to the pod's port through scheduler-svc and the
//! pod's node agent (`kubectl port-forward`), until interrupted.

use anyhow::{Context as _, Result, anyhow, bail};
use petset_proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::Clients;

/// `LOCAL:REMOTE` or `REMOTE` (the same port locally).
pub fn parse_ports(spec: &str) -> Result<(u16, u16)> {
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("{p:?} is not a port (1-65535)"))
    };
    match spec.split_once(':') {
        Some((local, remote)) => Ok((port(local)?, port(remote)?)),
        None => {
            let p = port(spec)?;
            Ok((p, p))
        }
    }
}

/// Listens on `address` for each `[LOCAL:]REMOTE` and relays every
/// connection; runs until interrupted.
pub async fn forward(
    c: &Clients,
    pod: &str,
    address: std::net::IpAddr,
    specs: &[String],
) -> Result<()> {
    if specs.is_empty() {
        bail!("at least one port is required: petctl port-forward POD [LOCAL:]REMOTE");
    }
    let mut listeners = Vec::new();
    for spec in specs {
        let (local, remote) = parse_ports(spec)?;
        let listener = TcpListener::bind((address, local))
            .await
            .with_context(|| format!("cannot listen on {address}:{local}"))?;
        out!("Forwarding from {} -> {remote}", listener.local_addr()?);
        listeners.push((listener, remote));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let (c, pod) = (c.clone(), pod.to_string());
        tasks.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                out!(
                    "Handling connection for {}",
                    listener.local_addr().map_or(0, |a| a.port())
                );
                let (c, pod) = (c.clone(), pod.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay(&c, &pod, remote, conn).await {
                        eprintln!("error: forwarding to {pod}:{remote}: {e:#}");
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One connection, relayed both ways until both sides closed.
async fn relay(c: &Clients, pod: &str, port: u16, conn: TcpStream) -> Result<()> {
    let (mut from_client, mut to_client) = conn.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::PortForwardRequest {
        start: Some(v1::PortForwardStart {
            namespace: c.namespace.clone(),
            name: pod.to_string(),
            port: port.into(),
        }),
        ..Default::default()
    })
    .await?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let message = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => v1::PortForwardRequest {
                    closed: true,
                    ..Default::default()
                },
                Ok(n) => v1::PortForwardRequest {
                    data: buf[..n].to_vec(),
                    ..Default::default()
                },
            };
            let last = message.closed;
            if tx.send(message).await.is_err() || last {
                return;
            }
        }
    });
    let mut from_pod = c
        .pods()
        .port_forward(ReceiverStream::new(rx))
        .await
        .map_err(crate::explain)?
        .into_inner();
    while let Some(m) = from_pod.message().await.map_err(crate::explain)? {
        to_client.write_all(&m.data).await?;
    }
    to_client.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_local_colon_remote_or_one_for_both() {
        assert_eq!(parse_ports("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_ports("18080:80").unwrap(), (18080, 80));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("a:80").is_err());
        assert!(parse_ports("80:70000").is_err());
    }
}
