//! DNS for headless services, authoritative for the zone, as the Kubernetes
//! DNS specification describes it:
//!
//! | query | answer |
//! |---|---|
//! | A/AAAA `<pod>.<svc>.<ns>.svc.<zone>` | the pod's address |
//! | A/AAAA `<svc>.<ns>.svc.<zone>` | every published pod's address |
//! | SRV `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | one record per published pod: its FQDN and the port |
//! | PTR `<reversed address>.in-addr.arpa` / `ip6.arpa` | the pod's FQDN |
//!
//! A pod is published when its service selects it and it is ready, or the
//! service has `publishNotReadyAddresses`. Unknown names in the zone get
//! NXDOMAIN with the zone's SOA; names outside it get REFUSED: this server
//! never resolves for others.
//!
//! # Guarantees
//! - Answers come from an in-memory [`ZoneIndex`] rebuilt after each
//!   change from watch-fed decoded copies of etcd (`Decoded`: each record
//!   decoded once, when it changes), so every replica follows etcd within
//!   one watch round trip and answers without touching etcd.
//! - [`resolve`] is a pure function of the index and the question.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, RwLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use petset_core::shutdown::CancellationToken;
use petset_core::store::mirror::Decoded;

use crate::endpoints::{published, sort_peers, target_port};
use crate::names::Zone;
use crate::records::{EndpointRecord, ServiceRecord};

mod server;
pub mod wire;

pub use server::serve;

/// TTL of every answer, in seconds: short, because pods move (CoreDNS's
/// Kubernetes plugin uses the same).
pub const TTL: u32 = 5;

/// One service and the pods DNS publishes for it, by ordinal.
#[derive(Debug, Clone)]
struct ServiceEntry {
    record: ServiceRecord,
    pods: Vec<EndpointRecord>,
}

/// Everything DNS answers from, at one etcd revision.
#[derive(Debug, Clone)]
pub struct ZoneIndex {
    zone: Name,
    zone_text: Zone,
    /// The zone's SOA at this revision, for apex and negative answers.
    soa: Record,
    namespaces: BTreeSet<String>,
    services: HashMap<(String, String), ServiceEntry>,
    reverse: HashMap<IpAddr, BTreeSet<Name>>,
    /// Every question the index has a record for (each pod's and
    /// service's addresses, each named port's SRV), answered once when the
    /// index is built: a query is one hash lookup. `Name`'s hash and
    /// equality ignore case, so a query in any case finds its answer.
    answered: HashMap<(Name, RecordType), Arc<Resolution>>,
    /// The A, AAAA and SRV answers among them, encoded
    /// ([`wire::Encoded`]), by the question's name in lower case on the
    /// wire and its type.
    encoded: HashMap<Box<[u8]>, wire::Encoded>,
}

impl ZoneIndex {
    /// Indexes `services` and `endpoints` for `zone` at `revision`.
    pub fn build(
        zone: &Zone,
        revision: i64,
        services: impl IntoIterator<Item = ServiceRecord>,
        endpoints: impl IntoIterator<Item = EndpointRecord>,
    ) -> ZoneIndex {
        let zone_name = fqdn(zone.as_str());
        let mut by_namespace: BTreeMap<String, Vec<EndpointRecord>> = BTreeMap::new();
        for endpoint in endpoints {
            by_namespace
                .entry(endpoint.namespace.clone())
                .or_default()
                .push(endpoint);
        }
        let serial = (revision.max(0) as u64 & u32::MAX as u64) as u32;
        let mut index = ZoneIndex {
            soa: soa(&zone_name, serial),
            zone: zone_name,
            zone_text: zone.clone(),
            namespaces: BTreeSet::new(),
            services: HashMap::new(),
            reverse: HashMap::new(),
            answered: HashMap::new(),
            encoded: HashMap::new(),
        };
        for service in services {
            let mut pods: Vec<EndpointRecord> = by_namespace
                .get(&service.namespace)
                .map(|eps| {
                    eps.iter()
                        .filter(|e| published(&service, e))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            sort_peers(&mut pods);
            for pod in &pods {
                let name = fqdn(&zone.pod_fqdn(&pod.namespace, &service.name, &pod.pod_name()));
                index.reverse.entry(pod.address).or_default().insert(name);
            }
            index.namespaces.insert(service.namespace.clone());
            index.services.insert(
                (service.namespace.clone(), service.name.clone()),
                ServiceEntry {
                    record: service,
                    pods,
                },
            );
        }
        index.answer_every_known_question();
        index
    }

    /// Fills [`ZoneIndex::answered`] with [`resolve`]'s own answers, so
    /// that the lookup and the resolver can never disagree.
    fn answer_every_known_question(&mut self) {
        let mut names = Vec::new();
        for ((ns, service), entry) in &self.services {
            let service_fqdn = self.zone_text.service_fqdn(ns, service);
            names.push((fqdn(&service_fqdn), false));
            for pod in &entry.pods {
                let pod_name = self.zone_text.pod_fqdn(ns, service, &pod.pod_name());
                names.push((fqdn(&pod_name), false));
            }
            for port in entry
                .record
                .spec
                .ports
                .iter()
                .filter(|p| !p.name.is_empty())
            {
                let srv = format!(
                    "_{}._{}.{service_fqdn}",
                    port.name,
                    port.protocol.srv_label()
                );
                names.push((fqdn(&srv), true));
            }
        }
        for (name, srv) in names {
            let qtypes: &[RecordType] = if srv {
                &[RecordType::SRV, RecordType::ANY]
            } else {
                &[RecordType::A, RecordType::AAAA, RecordType::ANY]
            };
            for qtype in qtypes {
                let resolution = resolve(self, &name, *qtype);
                self.answered
                    .insert((name.clone(), *qtype), Arc::new(resolution));
            }
        }
        // ANY is answered from `answered` only: it is rare, and its
        // answer repeats the others.
        let encoded = self
            .answered
            .keys()
            .filter(|(_, qtype)| *qtype != RecordType::ANY)
            .filter_map(|(name, qtype)| wire::Encoded::new(self, name, *qtype))
            .collect();
        self.encoded = encoded;
    }

    /// The answer to `name`/`qtype`: precomputed when the index holds
    /// records for it, else resolved now (negative answers, SOA, PTR).
    pub fn answer(&self, name: &Name, qtype: RecordType) -> Arc<Resolution> {
        match self.answered.get(&(name.clone(), qtype)) {
            Some(answer) => answer.clone(),
            None => Arc::new(resolve(self, name, qtype)),
        }
    }
}

fn soa(zone: &Name, serial: u32) -> Record {
    let mname = Name::from_ascii("ns.dns")
        .and_then(|n| n.append_domain(zone))
        .unwrap_or_else(|_| zone.clone());
    let rname = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(zone))
        .unwrap_or_else(|_| zone.clone());
    Record::from_rdata(
        zone.clone(),
        TTL,
        RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, TTL)),
    )
}

/// The reverse zones PTR questions are asked in.
static REVERSE_ZONES: LazyLock<[Name; 2]> = LazyLock::new(|| {
    ["in-addr.arpa.", "ip6.arpa."].map(|zone| Name::from_ascii(zone).expect("static name"))
});

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    name.to_lowercase()
}

/// What DNS answers one question with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// NoError, NXDomain or Refused.
    pub code: ResponseCode,
    /// Whether the answer is the zone's own (the AA bit).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The SOA for negative answers (authority section).
    pub soa: Option<Record>,
    /// Addresses of SRV targets (additional section).
    pub additionals: Vec<Record>,
}

impl Resolution {
    fn refused() -> Self {
        Resolution {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: vec![],
            soa: None,
            additionals: vec![],
        }
    }
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), TTL, rdata)
}

fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A | RecordType::ANY, IpAddr::V4(_))
            | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
    )
}

/// Answers one question from the index.
pub fn resolve(index: &ZoneIndex, name: &Name, qtype: RecordType) -> Resolution {
    let name = name.to_lowercase();
    if !index.zone.zone_of(&name) {
        if REVERSE_ZONES.iter().any(|zone| zone.zone_of(&name)) {
            return reverse(index, &name, qtype);
        }
        return Resolution::refused();
    }
    let nodata = || Resolution {
        code: ResponseCode::NoError,
        authoritative: true,
        answers: vec![],
        soa: Some(index.soa.clone()),
        additionals: vec![],
    };
    let nxdomain = || Resolution {
        code: ResponseCode::NXDomain,
        ..nodata()
    };
    let depth = (name.num_labels() - index.zone.num_labels()) as usize;
    let labels: Vec<String> = name
        .iter()
        .take(depth)
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let answer = |answers: Vec<Record>, additionals: Vec<Record>| {
        if answers.is_empty() {
            nodata()
        } else {
            Resolution {
                code: ResponseCode::NoError,
                authoritative: true,
                answers,
                soa: None,
                additionals,
            }
        }
    };
    match labels.as_slice() {
        [] => {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                answer(vec![index.soa.clone()], vec![])
            } else {
                nodata()
            }
        }
        [svc] if svc == "svc" => nodata(),
        [ns, svc] if svc == "svc" => {
            if index.namespaces.contains(ns) {
                nodata()
            } else {
                nxdomain()
            }
        }
        [service, ns, svc] if svc == "svc" => {
            match index.services.get(&(ns.clone(), service.clone())) {
                None => nxdomain(),
                Some(entry) => {
                    let answers = entry
                        .pods
                        .iter()
                        .filter(|p| wants(qtype, p.address))
                        .map(|p| address_record(&name, p.address))
                        .collect();
                    answer(answers, vec![])
                }
            }
        }
        [first, service, ns, svc] if svc == "svc" => {
            let Some(entry) = index.services.get(&(ns.clone(), service.clone())) else {
                return nxdomain();
            };
            if let Some(proto) = first.strip_prefix('_') {
                // `_tcp.<svc>...` exists as the parent of SRV names.
                let has = entry
                    .record
                    .spec
                    .ports
                    .iter()
                    .any(|p| p.protocol.srv_label() == proto && !p.name.is_empty());
                return if has { nodata() } else { nxdomain() };
            }
            match entry.pods.iter().find(|p| &p.pod_name() == first) {
                None => nxdomain(),
                Some(pod) => {
                    let answers = if wants(qtype, pod.address) {
                        vec![address_record(&name, pod.address)]
                    } else {
                        vec![]
                    };
                    answer(answers, vec![])
                }
            }
        }
        [port, proto, service, ns, svc] if svc == "svc" => {
            let Some(entry) = index.services.get(&(ns.clone(), service.clone())) else {
                return nxdomain();
            };
            let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
            else {
                return nxdomain();
            };
            let Some(service_port) = entry
                .record
                .spec
                .ports
                .iter()
                .find(|p| p.name == port && p.protocol.srv_label() == proto)
            else {
                return nxdomain();
            };
            if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                return nodata();
            }
            let targets: Vec<(Name, u16, IpAddr)> = entry
                .pods
                .iter()
                .filter_map(|pod| {
                    let port = target_port(&service_port.target_port, service_port.protocol, pod)?;
                    let target = fqdn(&index.zone_text.pod_fqdn(ns, service, &pod.pod_name()));
                    Some((target, port, pod.address))
                })
                .collect();
            let weight = if targets.is_empty() {
                0
            } else {
                (100 / targets.len()).max(1) as u16
            };
            let answers = targets
                .iter()
                .map(|(target, port, _)| {
                    Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, weight, *port, target.clone())),
                    )
                })
                .collect();
            let additionals = targets
                .iter()
                .map(|(target, _, ip)| address_record(target, *ip))
                .collect();
            answer(answers, additionals)
        }
        _ => nxdomain(),
    }
}

fn reverse(index: &ZoneIndex, name: &Name, qtype: RecordType) -> Resolution {
    let found = name
        .parse_arpa_name()
        .ok()
        .filter(|net| net.prefix_len() == net.max_prefix_len())
        .map(|net| net.addr());
    match found.and_then(|ip| index.reverse.get(&ip)) {
        Some(targets) => {
            let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                targets
                    .iter()
                    .map(|t| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(t.clone()))))
                    .collect()
            } else {
                vec![]
            };
            Resolution {
                code: ResponseCode::NoError,
                authoritative: true,
                answers,
                soa: None,
                additionals: vec![],
            }
        }
        None => Resolution {
            code: ResponseCode::NXDomain,
            authoritative: true,
            answers: vec![],
            soa: None,
            additionals: vec![],
        },
    }
}

/// The hickory request handler: answers from the current index.
#[derive(Debug, Clone)]
pub struct DnsHandler {
    index: Arc<RwLock<Arc<ZoneIndex>>>,
}

impl DnsHandler {
    /// Follows `services` and `endpoints` (decoded copies of the store's
    /// `services/` and `endpoints/` prefixes), rebuilding the index after
    /// each change until `shutdown`.
    pub fn follow(
        zone: Zone,
        services: Decoded<ServiceRecord>,
        endpoints: Decoded<EndpointRecord>,
        shutdown: CancellationToken,
    ) -> DnsHandler {
        let index = Arc::new(RwLock::new(Arc::new(ZoneIndex::build(&zone, 0, [], []))));
        let shared = index.clone();
        tokio::spawn(async move {
            let mut services_changed = services.changed();
            let mut endpoints_changed = endpoints.changed();
            loop {
                let rebuilt = Arc::new(build_from(&zone, &services, &endpoints));
                *shared.write().unwrap_or_else(|p| p.into_inner()) = rebuilt;
                tokio::select! {
                    changed = services_changed.changed() => if changed.is_err() { return },
                    changed = endpoints_changed.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
        });
        DnsHandler { index }
    }

    /// The index answers come from now.
    pub fn index(&self) -> Arc<ZoneIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn build_from(
    zone: &Zone,
    services: &Decoded<ServiceRecord>,
    endpoints: &Decoded<EndpointRecord>,
) -> ZoneIndex {
    // Each record was decoded once, when it changed: a rebuild decodes
    // nothing (with thousands of endpoints, decoding all of them per
    // change was identity-svc's largest cost).
    fn values<T: Clone>(copy: &Decoded<T>) -> (i64, Vec<T>) {
        copy.read().map_or((0, Vec::new()), |snapshot| {
            (
                snapshot.revision,
                snapshot.entries.values().map(|v| v.value.clone()).collect(),
            )
        })
    }
    let (services_revision, services) = values(services);
    let (endpoints_revision, endpoints) = values(endpoints);
    ZoneIndex::build(
        zone,
        services_revision.max(endpoints_revision),
        services,
        endpoints,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EndpointPort, ServicePort, ServiceSpec, TargetPort};
    use petset_core::validate::Protocol;

    pub(super) fn service(publish_not_ready: bool) -> ServiceRecord {
        ServiceRecord {
            uid: "u".into(),
            namespace: "default".into(),
            name: "kubia".into(),
            labels: Default::default(),
            annotations: Default::default(),
            generation: 1,
            created: std::time::SystemTime::UNIX_EPOCH,
            spec: ServiceSpec {
                selector: [("app".to_string(), "kubia".to_string())].into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                }],
                publish_not_ready_addresses: publish_not_ready,
            },
        }
    }

    pub(super) fn pod(ordinal: u32, ip: &str, ready: bool) -> EndpointRecord {
        EndpointRecord {
            namespace: "default".into(),
            set_name: "kubia".into(),
            ordinal,
            service: "kubia".into(),
            address: ip.parse().unwrap(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            ready,
            labels: [("app".to_string(), "kubia".to_string())].into(),
            incarnation: 1,
        }
    }

    pub(super) fn index(publish_not_ready: bool) -> ZoneIndex {
        ZoneIndex::build(
            &Zone::default(),
            7,
            [service(publish_not_ready)],
            [
                pod(0, "10.0.0.10", true),
                pod(1, "10.0.0.11", true),
                pod(2, "10.0.0.12", false),
            ],
        )
    }

    fn ask(index: &ZoneIndex, name: &str, qtype: RecordType) -> Resolution {
        resolve(index, &Name::from_ascii(name).unwrap(), qtype)
    }

    #[test]
    fn srv_lists_each_ready_pod_with_its_target_port() {
        let r = ask(
            &index(false),
            "_http._tcp.kubia.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(r.code, ResponseCode::NoError);
        assert!(r.authoritative);
        let srv: Vec<(String, u16)> = r
            .answers
            .iter()
            .map(|rec| match &rec.data {
                RData::SRV(srv) => (srv.target.to_string(), srv.port),
                other => panic!("not SRV: {other:?}"),
            })
            .collect();
        assert_eq!(
            srv,
            [
                ("kubia-0.kubia.default.svc.cluster.local.".to_string(), 8080),
                ("kubia-1.kubia.default.svc.cluster.local.".to_string(), 8080)
            ]
        );
        assert_eq!(r.additionals.len(), 2);
    }

    #[test]
    fn not_ready_pods_only_with_publish_not_ready_addresses() {
        assert_eq!(
            ask(
                &index(false),
                "kubia-2.kubia.default.svc.cluster.local.",
                RecordType::A
            )
            .code,
            ResponseCode::NXDomain
        );
        let r = ask(
            &index(true),
            "kubia-2.kubia.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            ask(
                &index(true),
                "kubia.default.svc.cluster.local.",
                RecordType::A
            )
            .answers
            .len(),
            3
        );
    }

    #[test]
    fn service_a_lists_ready_pods_and_names_are_case_insensitive() {
        let r = ask(
            &index(false),
            "KUBIA.Default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(r.answers.len(), 2);
        let r = ask(
            &index(false),
            "kubia.default.svc.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!(
            (r.code, r.answers.len(), r.soa.is_some()),
            (ResponseCode::NoError, 0, true)
        );
    }

    #[test]
    fn unknown_in_zone_is_nxdomain_and_outside_is_refused() {
        let r = ask(
            &index(false),
            "nope.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert!(r.soa.is_some());
        assert_eq!(
            ask(&index(false), "example.com.", RecordType::A).code,
            ResponseCode::Refused
        );
        assert_eq!(
            ask(
                &index(false),
                "_ftp._tcp.kubia.default.svc.cluster.local.",
                RecordType::SRV
            )
            .code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&index(false), "default.svc.cluster.local.", RecordType::A).code,
            ResponseCode::NoError
        );
        assert_eq!(
            ask(&index(false), "other.svc.cluster.local.", RecordType::A).code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn ptr_names_the_pod() {
        let r = ask(&index(false), "10.0.0.10.in-addr.arpa.", RecordType::PTR);
        match &r.answers[0].data {
            RData::PTR(ptr) => assert_eq!(
                ptr.0.to_string(),
                "kubia-0.kubia.default.svc.cluster.local."
            ),
            other => panic!("not PTR: {other:?}"),
        }
        assert_eq!(
            ask(&index(false), "12.0.0.10.in-addr.arpa.", RecordType::PTR).code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn precomputed_answers_are_the_resolvers_in_any_case() {
        let index = index(false);
        // Each known question was answered when the index was built.
        assert!(
            index.answered.len() >= 2 * 3 + 3 + 2,
            "{}",
            index.answered.len()
        );
        for name in [
            "kubia-0.kubia.default.svc.cluster.local.",
            "KUBIA-1.Kubia.Default.SVC.cluster.local.",
            "kubia.default.svc.cluster.local.",
            "_http._tcp.kubia.default.svc.cluster.local.",
            "_HTTP._TCP.kubia.default.svc.cluster.local.",
            // Not known: resolved per query.
            "kubia-2.kubia.default.svc.cluster.local.",
            "nope.default.svc.cluster.local.",
            "cluster.local.",
            "example.com.",
            "10.0.0.10.in-addr.arpa.",
        ] {
            let parsed = Name::from_ascii(name).unwrap();
            for qtype in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::ANY,
                RecordType::SOA,
                RecordType::PTR,
            ] {
                assert_eq!(
                    *index.answer(&parsed, qtype),
                    resolve(&index, &parsed, qtype),
                    "{name} {qtype}"
                );
            }
        }
        let known = Name::from_ascii("KUBIA-0.kubia.default.svc.cluster.local.").unwrap();
        assert!(index.answered.contains_key(&(known, RecordType::A)));
    }
}
