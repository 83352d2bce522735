//! The pods' DNS on the process runtime: pods share the node's network, so
//! the agent relays DNS (UDP and TCP, port 53, where every resolver asks)
//! from an address of the node's pod subnet kept for it to identity-svc's
//! DNS, and each pod's `/etc/resolv.conf` names that address with
//! Kubernetes' search path; its `/etc/hosts` names the pod itself, as the
//! kubelet writes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How long an answer from upstream is waited for.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay's sockets, bound.
#[derive(Debug)]
pub struct Relay {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
}

impl Relay {
    /// Binds `listen`, UDP and TCP.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Relay> {
        Ok(Relay {
            udp: Arc::new(UdpSocket::bind(listen).await?),
            tcp: TcpListener::bind(listen).await?,
        })
    }

    /// Relays every query to `upstream` until the task is dropped.
    pub async fn serve(self, upstream: SocketAddr) {
        relay(self.udp, self.tcp, upstream).await
    }
}

async fn relay(udp: Arc<UdpSocket>, tcp: TcpListener, upstream: SocketAddr) {
    tracing::info!(listen = ?udp.local_addr().ok(), %upstream, "relaying the pods' DNS");
    let udp_loop = async {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let (udp, query) = (udp.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(answer) = ask_udp(&query, upstream).await {
                    let _ = udp.send_to(&answer, from).await;
                }
            });
        }
    };
    let tcp_loop = async {
        loop {
            let Ok((mut client, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(Ok(mut server)) =
                    tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    };
    tokio::join!(udp_loop, tcp_loop);
}

async fn ask_udp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().ok()?,
        SocketAddr::V6(_) => "[::]:0".parse().ok()?,
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A pod's `/etc/resolv.conf`: the relay, Kubernetes' search path for the
/// pod's namespace, `ndots:5`.
pub fn resolv_conf(nameserver: IpAddr, namespace: &str, zone: &str) -> String {
    format!(
        "# petset: the pod's DNS is identity-svc's, relayed by the node agent.\n\
         nameserver {nameserver}\n\
         search {namespace}.svc.{zone} svc.{zone} {zone}\n\
         options ndots:5\n"
    )
}

/// A pod's `/etc/hosts`, as the kubelet writes it: localhost, and the pod's
/// own names (`<hostname>.<subdomain>.<namespace>.svc.<zone>` when it has a
/// governing service) at its address.
pub fn hosts(ip: IpAddr, hostname: &str, subdomain: &str, namespace: &str, zone: &str) -> String {
    let mut names = String::new();
    if !subdomain.is_empty() {
        names.push_str(&format!("{hostname}.{subdomain}.{namespace}.svc.{zone}\t"));
    }
    names.push_str(hostname);
    format!(
        "# petset-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         {ip}\t{names}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_files_say_what_the_kubelet_says() {
        let ip: IpAddr = "127.1.2.3".parse().unwrap();
        let hosts = hosts(ip, "web-0", "web", "shop", "cluster.local");
        assert!(
            hosts.ends_with("127.1.2.3\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{hosts}"
        );
        let resolv = resolv_conf("127.1.2.254".parse().unwrap(), "shop", "cluster.local");
        assert!(resolv.contains("nameserver 127.1.2.254\n"));
        assert!(resolv.contains("search shop.svc.cluster.local svc.cluster.local cluster.local\n"));
    }

    #[tokio::test]
    async fn queries_are_relayed_both_ways_over_udp_and_tcp() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // An upstream that answers each datagram and stream with "re:" and
        // what it got.
        let up_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = up_udp.local_addr().unwrap();
        let up_tcp = TcpListener::bind(upstream).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = up_udp.recv_from(&mut buf).await.unwrap();
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&buf[..n]);
                up_udp.send_to(&answer, from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            let (mut s, _) = up_tcp.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"re:").await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let relay = Relay::bind("127.0.0.1:0".parse().unwrap()).await;
        // TCP on the port UDP got (bound with port 0, the two may differ).
        let relay = relay.unwrap();
        let listen = relay.udp.local_addr().unwrap();
        let tcp_listen = relay.tcp.local_addr().unwrap();
        tokio::spawn(relay.serve(upstream));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        client.send_to(b"hello", listen).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(&buf[..n], b"re:hello");
        let mut s = TcpStream::connect(tcp_listen).await.unwrap();
        s.write_all(b"tcpq!").await.unwrap();
        let mut answer = [0u8; 8];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"re:tcpq!");
    }
}
