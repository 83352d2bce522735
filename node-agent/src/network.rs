//! Pod networks of the process runtime with `--pod-network bridge`, as the
//! CNI bridge plugin builds them: the node has a Linux bridge holding the
//! last address of its pod subnet (the pods' gateway, and the DNS relay's
//! address); each pod gets a network namespace of its own with one end of
//! a veth pair as its `eth0`, carrying the pod's address, the other end on
//! the bridge. So a pod can bind `0.0.0.0` on any port, and it reaches a
//! pod of another node through the host, which forwards between the
//! nodes' bridges (`net.ipv4.ip_forward`, and an `iptables` FORWARD accept
//! for the bridge, since Docker's FORWARD policy drops).
//!
//! The network namespace is named after the pod's address
//! (`/run/netns/petset-<ip>`): one per address on the host, since the
//! nodes' subnets do not overlap. It is made before the pod's first
//! container starts and removed after its last has ended, before the
//! address is given back; one left by an agent that died is removed when
//! an agent of the subnet starts.
//!
//! The work is done by iproute2's `ip` and `iptables`, as the node's other
//! namespace work is done by util-linux: one process per step.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// Where iproute2 keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The node's bridge.
#[derive(Debug, Clone)]
pub struct Bridge {
    /// The interface's name: `psbr` and the subnet's address in hex.
    pub name: String,
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The bridge's own address: the pods' gateway.
    pub gateway: Ipv4Addr,
}

/// One pod's network namespace and veth pair; [`Sandbox::remove`] takes
/// them down.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    veth: String,
}

impl Bridge {
    /// Makes (or takes over) the bridge for `subnet` with `gateway` as its
    /// address, lets the host forward to and from it, and removes the pod
    /// namespaces an earlier agent of this subnet left.
    pub async fn set_up(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Bridge, String> {
        if subnet.addr().is_loopback() {
            return Err(format!(
                "pod subnet {subnet} is on loopback, which is not routed between namespaces: \
                 give a private subnet (e.g. 10.244.1.0/24) or use --pod-network host"
            ));
        }
        let bridge = Bridge {
            name: bridge_name(subnet),
            subnet,
            gateway,
        };
        if !succeeds("ip", &["link", "show", "dev", &bridge.name]).await {
            ip(&["link", "add", &bridge.name, "type", "bridge"]).await?;
        }
        let address = format!("{gateway}/{}", subnet.prefix_len());
        // `replace`: the same address again is no error.
        ip(&["addr", "replace", &address, "dev", &bridge.name]).await?;
        ip(&["link", "set", &bridge.name, "up"]).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("cannot turn on IPv4 forwarding: {e}"))?;
        for direction in ["-i", "-o"] {
            let rule = ["FORWARD", direction, bridge.name.as_str(), "-j", "ACCEPT"];
            if !succeeds("iptables", &[&["-C"], &rule[..]].concat()).await {
                run("iptables", &[&["-I"], &rule[..]].concat(), None).await?;
            }
        }
        bridge.sweep().await;
        Ok(bridge)
    }

    /// Removes the bridge and its forwarding rules (the agent stops, its
    /// pods gone).
    pub async fn tear_down(&self) {
        for direction in ["-i", "-o"] {
            let _ = run(
                "iptables",
                &["-D", "FORWARD", direction, &self.name, "-j", "ACCEPT"],
                None,
            )
            .await;
        }
        let _ = ip(&["link", "del", &self.name]).await;
    }

    /// Removes the namespaces of this subnet's addresses that are left.
    async fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ip = name
                .strip_prefix("petset-")
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            if let Some(ip) = ip.filter(|ip| self.subnet.contains(ip)) {
                tracing::info!(netns = %name, "removing a pod network namespace an earlier run left");
                Sandbox::of(ip).remove().await;
            }
        }
    }

    /// Makes pod address `address`'s network namespace, plugged into the bridge.
    pub async fn sandbox(&self, address: Ipv4Addr) -> Result<Sandbox, String> {
        let sandbox = Sandbox::of(address);
        // One left by a pod whose task did not finish cleanly.
        if sandbox.path().exists() {
            sandbox.remove().await;
        }
        let made = async {
            ip(&["netns", "add", &sandbox.name]).await?;
            ip(&[
                "link",
                "add",
                &sandbox.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &sandbox.name,
            ])
            .await?;
            ip(&["link", "set", &sandbox.veth, "master", &self.name, "up"]).await?;
            let inside = format!(
                "addr add {address}/{prefix} dev eth0\n\
                 link set lo up\n\
                 link set eth0 up\n\
                 route add default via {gateway}\n",
                prefix = self.subnet.prefix_len(),
                gateway = self.gateway,
            );
            run("ip", &["-n", &sandbox.name, "-batch", "-"], Some(&inside)).await
        }
        .await;
        match made {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.remove().await;
                Err(e)
            }
        }
    }
}

impl Sandbox {
    fn of(ip: Ipv4Addr) -> Sandbox {
        Sandbox {
            name: format!("petset-{ip}"),
            veth: format!("psv{:08x}", u32::from(ip)),
        }
    }

    /// The namespace's file, which a container's processes join.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Takes the veth pair and the namespace down (the pod's processes are
    /// gone; a namespace a process still holds goes with its last one).
    pub async fn remove(&self) {
        let _ = ip(&["link", "del", &self.veth]).await;
        if let Err(e) = ip(&["netns", "del", &self.name]).await {
            tracing::warn!(netns = %self.name, error = %e, "a pod network namespace was not removed");
        }
    }
}

/// The bridge's interface name for `subnet`: `psbr` and the subnet's
/// address in hex (12 characters, within the kernel's 15).
fn bridge_name(subnet: Ipv4Net) -> String {
    format!("psbr{:08x}", u32::from(subnet.network()))
}

/// Whether `program args` runs and succeeds (a question asked of the
/// host: does this link or rule exist).
async fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

async fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args, None).await
}

/// Runs `program` with `args` (and `input` on its standard input); its
/// error output is the error.
async fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_follow_the_address() {
        let s = Sandbox::of("10.244.1.5".parse().unwrap());
        assert_eq!(s.name, "petset-10.244.1.5");
        assert_eq!(s.veth, "psv0af40105");
        // IFNAMSIZ: 15 characters and the NUL.
        assert!(s.veth.len() <= 15);
        assert_eq!(
            bridge_name("10.244.1.0/24".parse().unwrap()),
            "psbr0af40100"
        );
    }

    #[tokio::test]
    async fn a_loopback_subnet_is_refused_with_the_fix() {
        let e = Bridge::set_up(
            "127.1.1.0/24".parse().unwrap(),
            "127.1.1.254".parse().unwrap(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("--pod-network host"), "{e}");
    }
}
