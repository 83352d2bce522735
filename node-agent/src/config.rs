//! node-agent's settings: flags, each with an environment variable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use petset_core::config::TelemetryArgs;

/// How a pod's processes are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Namespaces when running as root, none otherwise.
    Auto,
    /// Own UTS and mount namespaces per container (needs root): the pod's
    /// hostname is set and its volumes are bind-mounted at their mountPath.
    Namespaces,
    /// Plain processes: the hostname is only in `HOSTNAME`, and pods with
    /// volume mounts are refused (they would not see their volumes).
    None,
}

/// Where pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Processes on this host (see `--isolation`).
    Process,
    /// Docker containers, each with its own address on a Docker network.
    Docker,
}

/// How pods reach the network (process runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodNetwork {
    /// The host's network: each pod has its own address of the pod subnet
    /// (a loopback one, e.g. 127.1.1.0/24) and must bind it, not 0.0.0.0.
    Host,
    /// A network namespace per pod, its `eth0` a veth on the node's bridge,
    /// which holds the subnet's last address (needs namespaces and a
    /// subnet that is not on loopback): pods bind any address and port,
    /// and reach the pods of other nodes through the host.
    Bridge,
}

/// node-agent: runs the pods the scheduler binds to this node.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "node-agent", version, about)]
pub struct Config {
    /// The node's name (a DNS-1123 subdomain).
    #[arg(long, env = "PETSET_NODE_NAME")]
    pub name: String,
    /// scheduler-svc's gRPC addresses: every replica, comma-separated (or
    /// the flag repeated), or one name that reaches them all. The node's
    /// calls go to whichever answers, so one replica down stops no pod.
    #[arg(
        long,
        env = "PETSET_SCHEDULER_ADDR",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    pub scheduler_addr: Vec<String>,
    /// identity-svc's gRPC address.
    #[arg(
        long,
        env = "PETSET_IDENTITY_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub identity_addr: String,
    /// storage-svc's gRPC address.
    #[arg(
        long,
        env = "PETSET_STORAGE_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    pub storage_addr: String,
    /// The agent's own gRPC address (pod logs).
    #[arg(
        long,
        env = "PETSET_AGENT_GRPC_ADDR",
        default_value = "127.0.0.1:10250"
    )]
    pub grpc_addr: SocketAddr,
    /// The addresses this node's pods get, one each (e.g. 127.1.1.0/24 on
    /// loopback: pods listening on the same port do not collide).
    #[arg(long, env = "PETSET_POD_SUBNET", default_value = "127.1.0.0/24")]
    pub pod_subnet: ipnet::Ipv4Net,
    /// How pods reach the network (process runtime).
    #[arg(long, env = "PETSET_POD_NETWORK", value_enum, default_value_t = PodNetwork::Host)]
    pub pod_network: PodNetwork,
    /// Where pod logs and emptyDir volumes live.
    #[arg(
        long,
        env = "PETSET_AGENT_DATA_DIR",
        default_value = "/var/lib/petset/agent"
    )]
    pub data_dir: PathBuf,
    /// Process runtime: the program to run for an image when a container
    /// has no command, `IMAGE=PROGRAM`. Docker runtime: the local image to
    /// run for an image, `IMAGE=LOCAL-IMAGE` (unmapped images run as
    /// named). Repeatable (or ','-separated in the variable); an image's
    /// tag may be left out to match every tag.
    #[arg(long = "image", env = "PETSET_IMAGE_MAP", value_delimiter = ',', value_parser = parse_pair)]
    pub images: Vec<(String, String)>,
    /// Where pods run.
    #[arg(long, env = "PETSET_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// Docker runtime: the network pods join (default: the network of the
    /// agent's own container).
    #[arg(long, env = "PETSET_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Docker runtime: the container whose PID namespace pods join, so that
    /// they die with it: `auto` (the agent's own container, when it runs in
    /// one), `none`, or a container name or ID.
    #[arg(long, env = "PETSET_DOCKER_SANDBOX", default_value = "auto")]
    pub docker_sandbox: String,
    /// The pods' DNS server (identity-svc's DNS): an address, or a name
    /// the agent resolves when it starts. Docker runtime: the containers'
    /// DNS server (port 53). Process runtime (`HOST:PORT`): the agent
    /// relays port 53 of the pod subnet's last address to it and names
    /// that address in each pod's /etc/resolv.conf.
    #[arg(long, env = "PETSET_POD_DNS")]
    pub pod_dns: Option<String>,
    /// The cluster's DNS zone (pods' search path).
    #[arg(long, env = "PETSET_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's address in its Node record (default: the agent
    /// container's address with the Docker runtime, else 127.0.0.1).
    #[arg(long, env = "PETSET_NODE_ADDRESS")]
    pub node_address: Option<String>,
    /// Most pods the node runs at once, as the kubelet's `maxPods`; the
    /// node registers the smaller of this and its free pod addresses.
    #[arg(long, env = "PETSET_MAX_PODS", default_value_t = 110)]
    pub max_pods: u32,
    /// Node lease TTL, seconds.
    #[arg(long, env = "PETSET_NODE_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: i64,
    /// Seconds before the first restart back-off step (then doubled, up to
    /// 5 minutes), as the kubelet's 10 s.
    #[arg(long, env = "PETSET_RESTART_BACKOFF", default_value_t = 10)]
    pub restart_backoff: u64,
    /// Process isolation.
    #[arg(long, env = "PETSET_ISOLATION", value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
    /// Labels of the node: `key=value`, repeatable.
    #[arg(long = "label", value_delimiter = ',', value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {text:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

impl Config {
    /// The image map, by image name.
    pub fn image_map(&self) -> BTreeMap<String, String> {
        self.images.iter().cloned().collect()
    }
}
