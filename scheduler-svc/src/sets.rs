//! StatefulSets: validated as Kubernetes validates `apps/v1`, defaulted as
//! it defaults them, and stored.
//!
//! # Guarantees
//! - A set is checked whole before anything is written; every broken rule
//!   is named, under its field.
//! - `metadata.generation` grows by one with each change of the spec.
//! - Fields Kubernetes forbids changing are refused with its message; petset
//!   also lets `podManagementPolicy` change on a live set
//!   (kubernetes#117693).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use petset_core::error::{Error, Result, Violations};
use petset_core::meta::{MetaInput, Scope};
use petset_core::quantity::Quantity;
use petset_core::store::page::PageRequest;
use petset_core::store::{Store, Versioned, decode_or_skip};
use petset_core::validate;
use petset_proto::v1;

use crate::records::{Keys, SetRecord, SetStatusRecord};

/// Longest set name: the revision label `<set>-<hash>` must stay a label
/// value (63 characters), as in Kubernetes.
pub const SET_NAME_MAX: usize = 52;

/// Kubernetes' message for a forbidden spec change, with the field petset
/// adds.
pub const FORBIDDEN_UPDATE: &str = "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', \
     'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy', 'minReadySeconds' \
     and 'podManagementPolicy' are forbidden";

/// A checked, defaulted set from the API.
#[derive(Debug, Clone)]
pub struct SetInput {
    /// Metadata.
    pub meta: MetaInput,
    /// The spec with Kubernetes' defaults filled in.
    pub spec: v1::StatefulSetSpec,
}

fn check_port_ref(field: &str, port: &str, named: &[String], v: &mut Violations) {
    match port.parse::<i64>() {
        Ok(n) => v.check(field, validate::port(n)),
        Err(_) if named.iter().any(|p| p == port) => {}
        Err(_) => v.add(
            field,
            format!(
                "must be a port number or the name of one of the container's ports, got {port:?}"
            ),
        ),
    }
}

fn check_probe(field: &str, probe: &mut v1::Probe, named: &[String], v: &mut Violations) {
    let handlers = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    if handlers != 1 {
        v.add(
            field,
            "must have exactly one of http_get, tcp_socket or exec",
        );
    }
    if let Some(http) = &mut probe.http_get {
        check_port_ref(&format!("{field}.http_get.port"), &http.port, named, v);
        match http.scheme.as_str() {
            "" => http.scheme = "HTTP".into(),
            "HTTP" | "HTTPS" => {}
            other => v.add(
                format!("{field}.http_get.scheme"),
                format!("must be HTTP or HTTPS, got {other:?}"),
            ),
        }
        if http.path.is_empty() {
            http.path = "/".into();
        } else if !http.path.starts_with('/') {
            v.add(format!("{field}.http_get.path"), "must start with '/'");
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        check_port_ref(&format!("{field}.tcp_socket.port"), &tcp.port, named, v);
    }
    if let Some(exec) = &probe.exec
        && exec.command.is_empty()
    {
        v.add(format!("{field}.exec.command"), "must not be empty");
    }
    for (name, value, default, min) in [
        (
            "initial_delay_seconds",
            &mut probe.initial_delay_seconds,
            0,
            0,
        ),
        ("period_seconds", &mut probe.period_seconds, 10, 1),
        ("timeout_seconds", &mut probe.timeout_seconds, 1, 1),
        ("success_threshold", &mut probe.success_threshold, 1, 1),
        ("failure_threshold", &mut probe.failure_threshold, 3, 1),
    ] {
        if *value == 0 {
            *value = default;
        }
        if *value < min {
            v.add(
                format!("{field}.{name}"),
                format!("must be {min} or more, got {value}"),
            );
        }
    }
}

fn check_resources(field: &str, resources: &v1::ResourceRequirements, v: &mut Violations) {
    for (kind, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, quantity) in map {
            let at = format!("{field}.{kind}.{name}");
            if name != "cpu" && name != "memory" {
                v.add(at, "only cpu and memory are understood");
                continue;
            }
            if let Err(e) = Quantity::parse(quantity) {
                v.add(at, e.to_string());
            }
        }
    }
}

fn clean_absolute(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path[1..]
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
}

/// Checks and defaults a set from the API; every broken rule is named.
pub fn parse(set: Option<&v1::StatefulSet>) -> Result<SetInput> {
    let Some(set) = set else {
        return Err(Error::invalid("stateful_set", "is required"));
    };
    let mut v = Violations::new();
    let meta = MetaInput::parse(
        "stateful_set.metadata",
        set.metadata.as_ref(),
        Scope::Namespaced,
        validate::dns1123_label,
        &mut v,
    );
    if meta.name.len() > SET_NAME_MAX {
        v.add(
            "stateful_set.metadata.name",
            format!(
                "must be no more than {SET_NAME_MAX} characters (its revision label '<name>-<hash>' must fit 63), got {}",
                meta.name.len()
            ),
        );
    }
    let mut spec = set.spec.clone().unwrap_or_default();
    let f = "stateful_set.spec";
    let replicas = *spec.replicas.get_or_insert(1);
    v.check(format!("{f}.replicas"), check_replicas(replicas));
    // Selector and template labels.
    let selector = spec.selector.clone().unwrap_or_default();
    let match_labels: BTreeMap<_, _> = selector.match_labels.clone().into_iter().collect();
    v.check(
        format!("{f}.selector.match_labels"),
        validate::labels(&match_labels),
    );
    if match_labels.is_empty() && selector.match_expressions.is_empty() {
        v.add(
            format!("{f}.selector"),
            "is required: the labels that pick this set's pods (e.g. app: kubia)",
        );
    }
    let mut template = spec.template.clone().unwrap_or_default();
    let template_labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone().into_iter().collect())
        .unwrap_or_default();
    v.check(
        format!("{f}.template.metadata.labels"),
        validate::labels(&template_labels),
    );
    let expressions_match = selector.match_expressions.iter().enumerate().all(|(i, e)| {
        let value = template_labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|x| e.values.contains(x)),
            "NotIn" => value.is_none_or(|x| !e.values.contains(x)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                v.add(
                    format!("{f}.selector.match_expressions[{i}].operator"),
                    format!("must be In, NotIn, Exists or DoesNotExist, got {other:?}"),
                );
                true
            }
        }
    });
    if !match_labels
        .iter()
        .all(|(k, val)| template_labels.get(k) == Some(val))
        || !expressions_match
    {
        v.add(
            format!("{f}.template.metadata.labels"),
            "Invalid value: `selector` does not match template `labels`",
        );
    }
    // Governing service.
    if spec.service_name.is_empty() {
        v.add(
            format!("{f}.service_name"),
            "is required: the headless service that governs the pods (their DNS subdomain)",
        );
    } else {
        v.check(
            format!("{f}.service_name"),
            validate::dns1123_label(&spec.service_name),
        );
    }
    // Claim templates.
    let mut claim_names = Vec::new();
    for (i, t) in spec.volume_claim_templates.iter().enumerate() {
        let at = format!("{f}.volume_claim_templates[{i}]");
        let name = t
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        v.check(
            format!("{at}.metadata.name"),
            validate::dns1123_label(&name),
        );
        if claim_names.contains(&name) {
            v.add(
                format!("{at}.metadata.name"),
                format!("template {name:?} is listed twice"),
            );
        }
        claim_names.push(name);
        petset_core::claim::parse_spec(&format!("{at}.spec"), t.spec.as_ref(), &mut v);
    }
    // Pod template.
    let pod = template.spec.get_or_insert_with(Default::default);
    let ps = format!("{f}.template.spec");
    match pod.restart_policy.as_str() {
        "" => pod.restart_policy = "Always".into(),
        "Always" => {}
        other => v.add(
            format!("{ps}.restart_policy"),
            format!("Unsupported value: {other:?}: supported values: \"Always\""),
        ),
    }
    let grace = *pod.termination_grace_period_seconds.get_or_insert(30);
    if grace < 0 {
        v.add(
            format!("{ps}.termination_grace_period_seconds"),
            format!("must be 0 or more, got {grace}"),
        );
    }
    v.check(
        format!("{ps}.node_selector"),
        validate::labels(&pod.node_selector.clone().into_iter().collect()),
    );
    if !pod.hostname.is_empty() || !pod.subdomain.is_empty() {
        v.add(format!("{ps}.hostname"), "is set by the controller (the pod's name and the set's serviceName); leave hostname and subdomain empty");
    }
    let mut volume_names = Vec::new();
    for (i, volume) in pod.volumes.iter().enumerate() {
        let at = format!("{ps}.volumes[{i}]");
        v.check(format!("{at}.name"), validate::dns1123_label(&volume.name));
        if volume_names.contains(&volume.name) || claim_names.contains(&volume.name) {
            v.add(format!("{at}.name"), format!("volume {:?} is declared twice (volumes and volumeClaimTemplates share one namespace)", volume.name));
        }
        volume_names.push(volume.name.clone());
        match (&volume.persistent_volume_claim, &volume.empty_dir) {
            (Some(pvc), None) => v.check(
                format!("{at}.persistent_volume_claim.claim_name"),
                validate::dns1123_subdomain(&pvc.claim_name),
            ),
            (None, Some(_)) => {}
            _ => v.add(
                at,
                "must have exactly one of persistent_volume_claim or empty_dir",
            ),
        }
    }
    if pod.containers.is_empty() {
        v.add(
            format!("{ps}.containers"),
            "at least one container is required",
        );
    }
    if let Some(sc) = &pod.security_context {
        let at = format!("{ps}.security_context");
        for (field, value) in [
            ("run_as_user", sc.run_as_user),
            ("run_as_group", sc.run_as_group),
            ("fs_group", sc.fs_group),
        ] {
            if let Some(value) = value {
                v.check(format!("{at}.{field}"), petset_core::security::id(value));
            }
        }
        for (j, g) in sc.supplemental_groups.iter().enumerate() {
            v.check(
                format!("{at}.supplemental_groups[{j}]"),
                petset_core::security::id(*g),
            );
        }
    }
    let all_containers: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
    let mut container_names = Vec::new();
    for (i, c) in pod.containers.iter_mut().enumerate() {
        let at = format!("{ps}.containers[{i}]");
        v.check(format!("{at}.name"), validate::dns1123_label(&c.name));
        if container_names.contains(&c.name) {
            v.add(
                format!("{at}.name"),
                format!("container name {:?} is used twice", c.name),
            );
        }
        container_names.push(c.name.clone());
        if c.image.is_empty() && c.command.is_empty() {
            v.add(format!("{at}.image"), "is required (or a command to run)");
        }
        let mut named = Vec::new();
        for (j, port) in c.ports.iter_mut().enumerate() {
            let pat = format!("{at}.ports[{j}]");
            v.check(
                format!("{pat}.container_port"),
                validate::port(port.container_port.into()),
            );
            if port.protocol.is_empty() {
                port.protocol = "TCP".into();
            }
            v.check(
                format!("{pat}.protocol"),
                validate::Protocol::parse(&port.protocol).map(|_| ()),
            );
            if !port.name.is_empty() {
                v.check(format!("{pat}.name"), validate::iana_svc_name(&port.name));
                if named.contains(&port.name) {
                    v.add(
                        format!("{pat}.name"),
                        format!("port name {:?} is used twice", port.name),
                    );
                }
                named.push(port.name.clone());
            }
        }
        for (j, env) in c.env.iter().enumerate() {
            let valid = !env.name.is_empty()
                && !env.name.starts_with(|ch: char| ch.is_ascii_digit())
                && env
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
            if !valid {
                v.add(format!("{at}.env[{j}].name"), format!("must be a C identifier-like name (letters, digits, '_', '-', '.'), got {:?}", env.name));
            }
            if let Some(from) = &env.value_from {
                if !env.value.is_empty() {
                    v.add(
                        format!("{at}.env[{j}].value"),
                        "may not be specified when `valueFrom` is not empty",
                    );
                }
                check_env_source(
                    &format!("{at}.env[{j}].value_from"),
                    from,
                    &all_containers,
                    &mut v,
                );
            }
        }
        for j in 0..c.env_from.len() {
            v.add(format!("{at}.env_from[{j}]"), NO_CONFIG);
        }
        if let Some(sc) = &c.security_context {
            check_security(&format!("{at}.security_context"), sc, &mut v);
        }
        if let Some(resources) = &c.resources {
            check_resources(&format!("{at}.resources"), resources, &mut v);
        }
        for (j, mount) in c.volume_mounts.iter().enumerate() {
            let mat = format!("{at}.volume_mounts[{j}]");
            if !volume_names.contains(&mount.name) && !claim_names.contains(&mount.name) {
                v.add(
                    format!("{mat}.name"),
                    format!(
                        "Not found: {:?}: no volume or volumeClaimTemplate has that name",
                        mount.name
                    ),
                );
            }
            if !clean_absolute(&mount.mount_path) {
                v.add(
                    format!("{mat}.mount_path"),
                    format!(
                        "must be an absolute, clean path (no '.', '..' or empty parts), got {:?}",
                        mount.mount_path
                    ),
                );
            }
        }
        for (name, probe) in [
            ("readiness_probe", &mut c.readiness_probe),
            ("liveness_probe", &mut c.liveness_probe),
        ] {
            if let Some(probe) = probe {
                check_probe(&format!("{at}.{name}"), probe, &named, &mut v);
            }
        }
    }
    spec.template = Some(template);
    // Policies.
    match spec.pod_management_policy.as_str() {
        "" => spec.pod_management_policy = "OrderedReady".into(),
        "OrderedReady" | "Parallel" => {}
        other => v.add(
            format!("{f}.pod_management_policy"),
            format!(
                "Unsupported value: {other:?}: supported values: \"OrderedReady\", \"Parallel\""
            ),
        ),
    }
    let strategy = spec.update_strategy.get_or_insert_with(Default::default);
    match strategy.r#type.as_str() {
        "" | "RollingUpdate" => {
            strategy.r#type = "RollingUpdate".into();
            let rolling = strategy.rolling_update.get_or_insert_with(Default::default);
            if rolling.partition < 0 {
                v.add(
                    format!("{f}.update_strategy.rolling_update.partition"),
                    format!("must be 0 or more, got {}", rolling.partition),
                );
            }
            if !rolling.max_unavailable.is_empty() {
                let ok = match rolling.max_unavailable.strip_suffix('%') {
                    Some(p) => p.parse::<u32>().is_ok_and(|p| (1..=100).contains(&p)),
                    None => rolling.max_unavailable.parse::<u32>().is_ok_and(|n| n >= 1),
                };
                if !ok {
                    v.add(format!("{f}.update_strategy.rolling_update.max_unavailable"), format!("must be a number of pods (1 or more) or a percentage (1%-100%), got {:?}", rolling.max_unavailable));
                }
            }
        }
        "OnDelete" => {
            if strategy.rolling_update.is_some() {
                v.add(
                    format!("{f}.update_strategy.rolling_update"),
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        other => v.add(
            format!("{f}.update_strategy.type"),
            format!(
                "Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""
            ),
        ),
    }
    let history = *spec.revision_history_limit.get_or_insert(10);
    if history < 0 {
        v.add(
            format!("{f}.revision_history_limit"),
            format!("must be 0 or more, got {history}"),
        );
    }
    if spec.min_ready_seconds < 0 {
        v.add(
            format!("{f}.min_ready_seconds"),
            format!("must be 0 or more, got {}", spec.min_ready_seconds),
        );
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(Default::default);
    for (name, value) in [
        ("when_deleted", &mut retention.when_deleted),
        ("when_scaled", &mut retention.when_scaled),
    ] {
        match value.as_str() {
            "" => *value = "Retain".into(),
            "Retain" | "Delete" => {}
            other => v.add(
                format!("{f}.persistent_volume_claim_retention_policy.{name}"),
                format!("Unsupported value: {other:?}: supported values: \"Retain\", \"Delete\""),
            ),
        }
    }
    let start = spec.ordinals.get_or_insert_with(Default::default).start;
    if start < 0 {
        v.add(
            format!("{f}.ordinals.start"),
            format!("must be 0 or more, got {start}"),
        );
    }
    if let Some(last) = (start as i64).checked_add(replicas.max(1) as i64 - 1)
        && v.is_empty()
    {
        v.merge(petset_core::identity::IdentityRef::parse(
            &format!("{f}.last_ordinal"),
            &meta.namespace,
            &meta.name,
            last,
        ))?;
    }
    v.into_result()?;
    Ok(SetInput { meta, spec })
}

/// The most replicas one set may ask for.
///
/// Kubernetes sets no bound, but a stored set is read by every scheduler
/// replica that will ever lead: a count the control plane cannot hold
/// (`replicas: 2147483647` planned as a list of pods) would crash each of
/// them in turn, for as long as the set is stored. 100,000 is far beyond
/// any real StatefulSet (Kubernetes supports 150,000 pods per cluster) and
/// well within what one leader holds in memory.
pub const MAX_REPLICAS: i32 = 100_000;

/// `replicas` is between 0 and [`MAX_REPLICAS`].
pub fn check_replicas(replicas: i32) -> std::result::Result<(), String> {
    if (0..=MAX_REPLICAS).contains(&replicas) {
        Ok(())
    } else {
        Err(format!(
            "must be between 0 and {MAX_REPLICAS} (a bound that keeps one set from exhausting the control plane), got {replicas}"
        ))
    }
}

/// The spec with the fields that may change blanked, to compare the rest.
fn immutable_part(spec: &v1::StatefulSetSpec) -> v1::StatefulSetSpec {
    let mut s = spec.clone();
    s.replicas = None;
    s.ordinals = None;
    s.template = None;
    s.update_strategy = None;
    s.revision_history_limit = None;
    s.persistent_volume_claim_retention_policy = None;
    s.min_ready_seconds = 0;
    s.pod_management_policy = String::new();
    s
}

/// The stored sets.
#[derive(Debug, Clone)]
pub struct Sets {
    store: Store,
}

/// A set with its status.
pub type SetWithStatus = (Versioned<SetRecord>, Option<SetStatusRecord>);

impl Sets {
    /// Sets kept in `store`.
    pub fn new(store: Store) -> Self {
        Sets { store }
    }

    /// Reads a set and its status.
    pub async fn get(&self, ns: &str, name: &str) -> Result<SetWithStatus> {
        let keys = Keys(&self.store);
        let set: Versioned<SetRecord> = self
            .store
            .fetch(&keys.set(ns, name), "statefulset", format!("{ns}/{name}"))
            .await?;
        let status = self
            .store
            .get::<SetStatusRecord>(&keys.status(ns, name))
            .await?
            .map(|s| s.value);
        Ok((set, status))
    }

    /// The sets of a namespace (all when `None`), with their status.
    pub async fn list(&self, ns: Option<&str>) -> Result<Vec<SetWithStatus>> {
        Ok(self.page(ns, &PageRequest::default()).await?.0)
    }

    /// One page of [`Sets::list`], with the token of the next (empty after
    /// the last): two range reads (the sets, then their statuses at the
    /// same revision), not one read more per set.
    pub async fn page(
        &self,
        ns: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<SetWithStatus>, String)> {
        let keys = Keys(&self.store);
        let read = self.store.list_page(&keys.sets(ns), page).await?;
        let sets: Vec<Versioned<SetRecord>> = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<SetRecord>)
            .collect();
        let status_key =
            |s: &Versioned<SetRecord>| keys.status(&s.value.meta.namespace, &s.value.meta.name);
        let under = match ns {
            Some(ns) => self.store.prefix(&["setstatus", ns]),
            None => self.store.prefix(&["setstatus"]),
        };
        let statuses = self
            .store
            .beside(page, &read, &under, sets.iter().map(status_key))
            .await?;
        let mut statuses: BTreeMap<String, SetStatusRecord> = statuses
            .iter()
            .filter_map(|kv| {
                let status = decode_or_skip::<SetStatusRecord>(kv)?;
                Some((String::from_utf8_lossy(kv.key()).into_owned(), status.value))
            })
            .collect();
        let sets = sets
            .into_iter()
            .map(|set| {
                let status = statuses.remove(&status_key(&set));
                (set, status)
            })
            .collect();
        Ok((sets, read.continue_token()))
    }

    /// Creates or updates a set.
    pub async fn apply(&self, input: SetInput) -> Result<Versioned<SetRecord>> {
        let key = Keys(&self.store).set(&input.meta.namespace, &input.meta.name);
        let existing = self.store.get::<SetRecord>(&key).await?;
        let record = match &existing {
            None => SetRecord {
                meta: input.meta.create(),
                spec: input.spec,
                deleting: None,
                trace: petset_core::telemetry::current_traceparent(),
            },
            Some(current) => {
                input
                    .meta
                    .check_version("statefulset", current.mod_revision)?;
                if current.value.deleting.is_some() {
                    return Err(Error::FailedPrecondition(format!(
                        "statefulset {} is being deleted; apply it again once it is gone",
                        input.meta.display_name()
                    )));
                }
                if immutable_part(&current.value.spec) != immutable_part(&input.spec) {
                    return Err(Error::invalid("stateful_set.spec", FORBIDDEN_UPDATE));
                }
                let mut record = current.value.clone();
                if record.spec != input.spec {
                    record.meta.generation += 1;
                    record.trace = petset_core::telemetry::current_traceparent();
                }
                record.spec = input.spec;
                record.meta.labels = input.meta.labels.clone();
                record.meta.annotations = input.meta.annotations.clone();
                record
            }
        };
        if let Some(current) = &existing
            && current.value == record
        {
            return Ok(current.clone());
        }
        let written = self
            .store
            .put_over(&key, record, existing.as_ref())
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "statefulset {} changed while being applied; apply again",
                    input.meta.display_name()
                ))
            })?;
        tracing::info!(set = %written.value.meta.display_name(), generation = written.value.meta.generation, "statefulset applied");
        Ok(written)
    }

    /// Sets `spec.replicas`.
    pub async fn scale(&self, ns: &str, name: &str, replicas: i32) -> Result<Versioned<SetRecord>> {
        check_replicas(replicas).map_err(|rule| Error::invalid("replicas", rule))?;
        let (current, _) = self.get(ns, name).await?;
        let mut spec = current.value.spec.clone();
        spec.replicas = Some(replicas);
        let mut set = v1::StatefulSet {
            metadata: Some(current.value.meta.to_api(current.mod_revision)),
            spec: Some(spec),
            status: None,
        };
        // The same checks as an apply (the last ordinal must still make a
        // valid pod name), over the version read.
        set.metadata.as_mut().expect("set").creation_timestamp = None;
        self.apply(parse(Some(&set))?).await
    }

    /// Asks for deletion: the controller deletes the pods, then the set.
    pub async fn delete(&self, ns: &str, name: &str) -> Result<()> {
        let (current, _) = self.get(ns, name).await?;
        if current.value.deleting.is_some() {
            return Ok(());
        }
        let mut record = current.value.clone();
        record.deleting = Some(std::time::SystemTime::now());
        let key = Keys(&self.store).set(ns, name);
        self.store
            .put_over(&key, record, Some(&current))
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "statefulset {ns}/{name} changed while being deleted; retry"
                ))
            })?;
        tracing::info!(set = %format!("{ns}/{name}"), "statefulset deletion asked for");
        Ok(())
    }
}

/// Why `configMapKeyRef`, `secretKeyRef` and `envFrom` are refused.
const NO_CONFIG: &str = "ConfigMaps and Secrets do not exist in petset yet: set the variable with \
     `value` (it may use $(OTHER_VAR)) or `valueFrom.fieldRef`/`resourceFieldRef`";

/// Checks one `env[].valueFrom`: exactly one source, and one petset can
/// answer (Kubernetes' downward API for env).
fn check_env_source(at: &str, from: &v1::EnvVarSource, containers: &[String], v: &mut Violations) {
    let set = [
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.secret_key_ref.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        v.add(
            at,
            "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        );
        return;
    }
    if let Some(field) = &from.field_ref {
        if !matches!(field.api_version.as_str(), "" | "v1") {
            v.add(
                format!("{at}.field_ref.api_version"),
                format!(
                    "Unsupported value: {:?}: supported values: v1",
                    field.api_version
                ),
            );
        }
        v.check(
            format!("{at}.field_ref.field_path"),
            petset_core::downward::field_path(&field.field_path),
        );
    }
    if let Some(resource) = &from.resource_field_ref {
        if !petset_core::downward::RESOURCES.contains(&resource.resource.as_str()) {
            v.add(
                format!("{at}.resource_field_ref.resource"),
                format!(
                    "Unsupported value: {:?}: supported values: {}",
                    resource.resource,
                    petset_core::downward::RESOURCES.join(", ")
                ),
            );
        } else {
            v.check(
                format!("{at}.resource_field_ref.divisor"),
                petset_core::downward::divisor(&resource.resource, &resource.divisor),
            );
        }
        if !resource.container_name.is_empty() && !containers.contains(&resource.container_name) {
            v.add(
                format!("{at}.resource_field_ref.container_name"),
                format!(
                    "Not found: {:?}: no container of the pod has that name",
                    resource.container_name
                ),
            );
        }
    }
    if from.config_map_key_ref.is_some() {
        v.add(format!("{at}.config_map_key_ref"), NO_CONFIG);
    }
    if from.secret_key_ref.is_some() {
        v.add(format!("{at}.secret_key_ref"), NO_CONFIG);
    }
}

/// Checks a container's security context: ids in range, capabilities that
/// exist, and no contradiction Kubernetes refuses.
fn check_security(at: &str, sc: &v1::SecurityContext, v: &mut Violations) {
    for (field, value) in [
        ("run_as_user", sc.run_as_user),
        ("run_as_group", sc.run_as_group),
    ] {
        if let Some(value) = value {
            v.check(format!("{at}.{field}"), petset_core::security::id(value));
        }
    }
    if let Some(caps) = &sc.capabilities {
        for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
            for (j, name) in names.iter().enumerate() {
                v.check(
                    format!("{at}.capabilities.{list}[{j}]"),
                    petset_core::security::capability(name).map(|_| ()),
                );
            }
        }
    }
    if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
        v.add(
            format!("{at}.allow_privilege_escalation"),
            "cannot set allowPrivilegeEscalation to false and privileged to true",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(container: v1::Container) -> v1::StatefulSet {
        let labels: std::collections::HashMap<String, String> =
            [("app".to_string(), "web".to_string())].into();
        v1::StatefulSet {
            metadata: Some(v1::ObjectMeta {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(v1::StatefulSetSpec {
                replicas: Some(1),
                selector: Some(v1::SetSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                service_name: "web".into(),
                template: Some(v1::PodTemplateSpec {
                    metadata: Some(v1::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(v1::PodSpec {
                        containers: vec![container],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn from(source: v1::EnvVarSource) -> v1::EnvVar {
        v1::EnvVar {
            name: "V".into(),
            value: String::new(),
            value_from: Some(source),
        }
    }

    fn field(path: &str) -> v1::EnvVarSource {
        v1::EnvVarSource {
            field_ref: Some(v1::ObjectFieldSelector {
                api_version: String::new(),
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    fn resource(resource: &str, divisor: &str, container: &str) -> v1::EnvVarSource {
        v1::EnvVarSource {
            resource_field_ref: Some(v1::ResourceFieldSelector {
                container_name: container.into(),
                resource: resource.into(),
                divisor: divisor.into(),
            }),
            ..Default::default()
        }
    }

    /// The fields the API names when it refuses `env`, `env_from`.
    fn refused(env: Vec<v1::EnvVar>, env_from: Vec<v1::EnvFromSource>) -> Vec<String> {
        let container = v1::Container {
            name: "web".into(),
            image: "web".into(),
            env,
            env_from,
            ..Default::default()
        };
        match parse(Some(&set_with(container))) {
            Ok(_) => Vec::new(),
            Err(Error::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn env_value_from_is_checked_field_by_field() {
        let at = "stateful_set.spec.template.spec.containers[0]";
        // What petset answers.
        let fine = vec![
            from(field("metadata.name")),
            from(field("metadata.labels['app']")),
            from(field("status.podIP")),
            from(resource("limits.memory", "1Mi", "")),
            from(resource("requests.cpu", "1m", "web")),
            v1::EnvVar {
                name: "URL".into(),
                value: "http://$(V):80".into(),
                value_from: None,
            },
        ];
        assert_eq!(refused(fine, Vec::new()), Vec::<String>::new());
        // What it does not, each named.
        let mut both = from(field("metadata.name"));
        both.value = "x".into();
        let mut two = field("metadata.name");
        two.resource_field_ref = resource("limits.cpu", "", "").resource_field_ref;
        let config = v1::EnvVarSource {
            config_map_key_ref: Some(v1::KeySelector {
                name: "settings".into(),
                key: "k".into(),
                optional: false,
            }),
            ..Default::default()
        };
        let cases = vec![
            (
                from(field("spec.serviceAccountName")),
                "value_from.field_ref.field_path",
            ),
            (
                from(resource("limits.gpu", "", "")),
                "value_from.resource_field_ref.resource",
            ),
            (
                from(resource("limits.cpu", "1Mi", "")),
                "value_from.resource_field_ref.divisor",
            ),
            (
                from(resource("limits.cpu", "", "sidecar")),
                "value_from.resource_field_ref.container_name",
            ),
            (from(config), "value_from.config_map_key_ref"),
            (from(v1::EnvVarSource::default()), "value_from"),
            (from(two), "value_from"),
            (both, "value"),
        ];
        for (var, want) in cases {
            assert_eq!(
                refused(vec![var.clone()], Vec::new()),
                vec![format!("{at}.env[0].{want}")],
                "{var:?}"
            );
        }
        let bad_security = v1::Container {
            name: "web".into(),
            image: "web".into(),
            security_context: Some(v1::SecurityContext {
                run_as_user: Some(-1),
                capabilities: Some(v1::Capabilities {
                    add: vec!["NET_ADMIN".into(), "FLY".into()],
                    drop: vec!["all".into()],
                }),
                privileged: Some(true),
                allow_privilege_escalation: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fields: Vec<String> = match parse(Some(&set_with(bad_security))) {
            Err(Error::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("{:?}", other.map(|_| ())),
        };
        assert_eq!(
            fields,
            [
                format!("{at}.security_context.run_as_user"),
                format!("{at}.security_context.capabilities.add[1]"),
                format!("{at}.security_context.allow_privilege_escalation"),
            ]
        );
        let env_from = vec![v1::EnvFromSource {
            prefix: String::new(),
            config_map_ref: Some(v1::ObjectReference {
                name: "settings".into(),
                optional: false,
            }),
            secret_ref: None,
        }];
        assert_eq!(
            refused(Vec::new(), env_from),
            vec![format!("{at}.env_from[0]")]
        );
    }
}
