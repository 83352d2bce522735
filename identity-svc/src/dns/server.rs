//! The DNS server's sockets: one UDP socket read by a loop per core, and
//! TCP connections (two-byte length framing, RFC 1035 4.2.2), each packet
//! answered by [`respond`] from the index of that moment.
//!
//! A loop answers each UDP packet itself, with buffers it keeps: no task,
//! message or allocation per query on the pre-encoded path. hickory-proto
//! still decodes and encodes everything else.
//!
//! # Guarantees
//! - At most [`TCP_CONNECTIONS`] TCP connections are served at once; one
//!   more is closed at once. A connection idle for [`TCP_IDLE`] is closed.
//! - Every loop ends at shutdown.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use metrics::Counter;
use petset_core::shutdown::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::DnsHandler;
use super::wire::{Transport, respond};

/// TCP connections served at once.
pub const TCP_CONNECTIONS: usize = 64;

/// How long a TCP connection may stay silent before it is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// The largest UDP packet read; longer ones are cut and fail to decode.
const UDP_READ: usize = 4096;

/// `petset_dns_queries_total`, by response code, registered once.
#[derive(Clone)]
struct Queries {
    no_error: Counter,
    nx_domain: Counter,
    refused: Counter,
    other: Counter,
}

impl Queries {
    fn new() -> Queries {
        let counter =
            |rcode: &'static str| metrics::counter!("petset_dns_queries_total", "rcode" => rcode);
        Queries {
            no_error: counter("NoError"),
            nx_domain: counter("NXDomain"),
            refused: counter("Refused"),
            other: counter("other"),
        }
    }

    fn count(&self, rcode: ResponseCode) {
        match rcode {
            ResponseCode::NoError => &self.no_error,
            ResponseCode::NXDomain => &self.nx_domain,
            ResponseCode::Refused => &self.refused,
            _ => &self.other,
        }
        .increment(1);
    }
}

/// Serves DNS on `udp` and `tcp` until `shutdown`.
pub async fn serve(
    handler: DnsHandler,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: CancellationToken,
) {
    let queries = Queries::new();
    let udp = Arc::new(udp);
    let mut loops = JoinSet::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..cores {
        loops.spawn(answer_udp(handler.clone(), udp.clone(), queries.clone()));
    }
    loops.spawn(accept_tcp(handler, tcp, queries));
    shutdown.cancelled().await;
    loops.shutdown().await;
}

async fn answer_udp(handler: DnsHandler, socket: Arc<UdpSocket>, queries: Queries) {
    let mut packet = vec![0u8; UDP_READ];
    let mut out = Vec::with_capacity(super::wire::UDP_PAYLOAD as usize);
    loop {
        let (len, peer) = match socket.recv_from(&mut packet).await {
            Ok(received) => received,
            Err(error) => {
                // An ICMP error for an earlier answer, on some systems.
                tracing::debug!(%error, "DNS/UDP receive failed");
                continue;
            }
        };
        let Some(rcode) = respond(&handler.index(), &packet[..len], Transport::Udp, &mut out)
        else {
            continue;
        };
        queries.count(rcode);
        tracing::debug!(%peer, %rcode, "dns query");
        if let Err(error) = socket.send_to(&out, peer).await {
            tracing::debug!(%error, %peer, "DNS/UDP answer not sent");
        }
    }
}

async fn accept_tcp(handler: DnsHandler, listener: TcpListener, queries: Queries) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "DNS/TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "DNS/TCP connection refused: {TCP_CONNECTIONS} already open");
            continue;
        };
        let (handler, queries) = (handler.clone(), queries.clone());
        connections.spawn(async move {
            if let Err(error) = answer_tcp(&handler, stream, &queries).await {
                tracing::debug!(%error, %peer, "DNS/TCP connection ended");
            }
            drop(slot);
        });
    }
}

async fn answer_tcp(
    handler: &DnsHandler,
    mut stream: TcpStream,
    queries: &Queries,
) -> std::io::Result<()> {
    let mut packet = Vec::new();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            // Closed by the client, or idle too long.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        packet.resize(len, 0);
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(rcode) = respond(&handler.index(), &packet, Transport::Tcp, &mut out) else {
            continue;
        };
        queries.count(rcode);
        let Ok(framed) = u16::try_from(out.len()) else {
            tracing::warn!(bytes = out.len(), "DNS answer too long for TCP; not sent");
            continue;
        };
        // One write: a separate length write would wait out Nagle's
        // algorithm against the client's delayed ACK.
        frame.clear();
        frame.extend_from_slice(&framed.to_be_bytes());
        frame.extend_from_slice(&out);
        stream.write_all(&frame).await?;
    }
}
