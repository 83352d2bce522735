//! `petset.v1.StatefulSets`, `Pods` and `Nodes` over the domain modules.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;

use futures::Stream;
use petset_core::error::{Error, Result, Violations};
use petset_core::quantity::format_bytes;
use petset_core::shutdown::CancellationToken;
use petset_core::store::mirror::Mirror;
use petset_core::store::page::PageRequest;
use petset_core::store::{Store, Versioned};
use petset_core::validate;
use petset_proto::v1::{self, nodes_server, pods_server, stateful_sets_server};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::nodes::{self, Nodes};
use crate::pods::{self, PodWithStatus, Pods};
use crate::records::{Keys, RevisionRecord, SetStatusRecord};
use crate::sets::{self, SetWithStatus, Sets};

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn set_to_api((set, status): &SetWithStatus) -> v1::StatefulSet {
    let status = status.clone().unwrap_or_default();
    let mut conditions = Vec::new();
    if let Some(why) = &status.blocked {
        conditions.push(v1::StatefulSetCondition {
            r#type: "Progressing".into(),
            status: "False".into(),
            reason: "Blocked".into(),
            message: why.clone(),
            last_transition_time: None,
        });
    }
    if set.value.deleting.is_some() {
        conditions.push(v1::StatefulSetCondition {
            r#type: "Terminating".into(),
            status: "True".into(),
            reason: "DeletionRequested".into(),
            message: "pods are deleted highest ordinal first, then the set".into(),
            last_transition_time: set.value.deleting.map(Into::into),
        });
    }
    v1::StatefulSet {
        metadata: Some(set.value.meta.to_api(set.mod_revision)),
        spec: Some(set.value.spec.clone()),
        status: Some(v1::StatefulSetStatus {
            observed_generation: status.observed_generation,
            replicas: status.replicas as i32,
            ready_replicas: status.ready_replicas as i32,
            available_replicas: status.available_replicas as i32,
            current_replicas: status.current_replicas as i32,
            updated_replicas: status.updated_replicas as i32,
            current_revision: status.current_revision,
            update_revision: status.update_revision,
            collision_count: 0,
            conditions,
        }),
    }
}

fn pod_to_api((pod, status): &PodWithStatus) -> v1::Pod {
    let p = &pod.value;
    let status = status.as_ref().map(|s| v1::PodStatus {
        phase: s.phase.clone(),
        ready: s.ready,
        pod_ip: s.pod_ip.clone(),
        restart_count: s.restart_count,
        message: s.message.clone(),
        reason: s.reason.clone(),
        ready_since: s.ready_since.map(Into::into),
        start_time: s.start_time.map(Into::into),
        last_termination_reason: s.last_termination_reason.clone(),
    });
    v1::Pod {
        metadata: Some(p.meta.to_api(pod.mod_revision)),
        spec: Some(p.spec.clone()),
        status: Some(status.unwrap_or_else(|| v1::PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        })),
        node_name: p.node.clone(),
        set_name: p.set_name.clone(),
        ordinal: p.ordinal.into(),
        incarnation: p.incarnation,
        revision: p.revision.clone(),
        deletion_timestamp: p.deletion.as_ref().map(|d| d.requested_at.into()),
        deletion_grace_period_seconds: p.deletion.as_ref().map(|d| d.grace_seconds).unwrap_or(0),
        trace_parent: p.trace.clone().unwrap_or_default(),
    }
}

fn revision_to_api(r: &Versioned<RevisionRecord>) -> v1::ControllerRevision {
    v1::ControllerRevision {
        name: r.value.name.clone(),
        revision: r.value.revision,
        template: Some(r.value.template.clone()),
        created: Some(r.value.created.into()),
    }
}

fn namespace_filter(ns: &str) -> Result<Option<String>> {
    if ns.is_empty() {
        return Ok(None);
    }
    let mut v = Violations::new();
    v.check("namespace", validate::dns1123_label(ns));
    v.into_result()?;
    Ok(Some(ns.to_string()))
}

/// The StatefulSets service.
#[derive(Debug, Clone)]
pub struct StatefulSetsApi {
    /// The stored sets.
    pub sets: Sets,
    /// For revisions and watches.
    pub store: Store,
    /// Ends the watch streams when the server stops.
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl stateful_sets_server::StatefulSets for StatefulSetsApi {
    async fn apply_stateful_set(
        &self,
        request: Request<v1::ApplyStatefulSetRequest>,
    ) -> Result<Response<v1::StatefulSet>, Status> {
        let input = sets::parse(request.get_ref().stateful_set.as_ref())?;
        let written = self.sets.apply(input).await?;
        let status = self
            .store
            .get::<SetStatusRecord>(
                &Keys(&self.store).status(&written.value.meta.namespace, &written.value.meta.name),
            )
            .await?
            .map(|s| s.value);
        Ok(Response::new(set_to_api(&(written, status))))
    }

    async fn get_stateful_set(
        &self,
        request: Request<v1::GetStatefulSetRequest>,
    ) -> Result<Response<v1::StatefulSet>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        Ok(Response::new(set_to_api(
            &self.sets.get(&ns, &r.name).await?,
        )))
    }

    async fn list_stateful_sets(
        &self,
        request: Request<v1::ListStatefulSetsRequest>,
    ) -> Result<Response<v1::ListStatefulSetsResponse>, Status> {
        let r = request.get_ref();
        let ns = namespace_filter(&r.namespace)?;
        let mut v = Violations::new();
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let (sets, token) = self.sets.page(ns.as_deref(), &page).await?;
        Ok(Response::new(v1::ListStatefulSetsResponse {
            stateful_sets: sets.iter().map(set_to_api).collect(),
            r#continue: token,
        }))
    }

    async fn delete_stateful_set(
        &self,
        request: Request<v1::DeleteStatefulSetRequest>,
    ) -> Result<Response<v1::DeleteStatefulSetResponse>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        self.sets.delete(&ns, &r.name).await?;
        Ok(Response::new(v1::DeleteStatefulSetResponse {}))
    }

    async fn scale_stateful_set(
        &self,
        request: Request<v1::ScaleStatefulSetRequest>,
    ) -> Result<Response<v1::StatefulSet>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        self.sets.scale(&ns, &r.name, r.replicas).await?;
        Ok(Response::new(set_to_api(
            &self.sets.get(&ns, &r.name).await?,
        )))
    }

    async fn list_revisions(
        &self,
        request: Request<v1::ListRevisionsRequest>,
    ) -> Result<Response<v1::ListRevisionsResponse>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        self.sets.get(&ns, &r.name).await?;
        let (mut items, _) = self
            .store
            .list::<RevisionRecord>(&Keys(&self.store).revisions(&ns, &r.name))
            .await?;
        items.sort_by_key(|(_, r)| r.value.revision);
        let revisions = items.iter().map(|(_, r)| revision_to_api(r)).collect();
        Ok(Response::new(v1::ListRevisionsResponse { revisions }))
    }

    type WatchStatefulSetsStream = EventStream<v1::StatefulSetEvent>;

    async fn watch_stateful_sets(
        &self,
        request: Request<v1::WatchStatefulSetsRequest>,
    ) -> Result<Response<Self::WatchStatefulSetsStream>, Status> {
        let ns = namespace_filter(&request.get_ref().namespace)?;
        let keys = Keys(&self.store);
        let specs = Mirror::spawn(&self.store, keys.sets(None));
        let statuses = Mirror::spawn(&self.store, self.store.prefix(&["setstatus"]));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sets = self.sets.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let (mut a, mut b) = (specs.changed(), statuses.changed());
            let mut sent: BTreeMap<String, v1::StatefulSet> = BTreeMap::new();
            loop {
                let now = match sets.list(ns.as_deref()).await {
                    Ok(list) => list,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let mut current = BTreeMap::new();
                for item in &now {
                    let api = set_to_api(item);
                    let meta = api.metadata.clone().unwrap_or_default();
                    current.insert(format!("{}/{}", meta.namespace, meta.name), api);
                }
                for (name, set) in &current {
                    let kind = match sent.get(name) {
                        None => "ADDED",
                        Some(old) if old != set => "MODIFIED",
                        Some(_) => continue,
                    };
                    let event = v1::StatefulSetEvent {
                        r#type: kind.into(),
                        stateful_set: Some(set.clone()),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                for (name, set) in &sent {
                    if !current.contains_key(name) {
                        let event = v1::StatefulSetEvent {
                            r#type: "DELETED".into(),
                            stateful_set: Some(set.clone()),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                sent = current;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    r = a.changed() => if r.is_err() { return },
                    r = b.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The Pods service.
#[derive(Debug, Clone)]
pub struct PodsApi {
    /// The stored pods.
    pub pods: Pods,
    /// The store (node records, for the agents' addresses).
    pub store: Store,
}

#[tonic::async_trait]
impl pods_server::Pods for PodsApi {
    async fn get_pod(
        &self,
        request: Request<v1::GetPodRequest>,
    ) -> Result<Response<v1::Pod>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        Ok(Response::new(pod_to_api(
            &self.pods.get(&ns, &r.name).await?,
        )))
    }

    async fn list_pods(
        &self,
        request: Request<v1::ListPodsRequest>,
    ) -> Result<Response<v1::ListPodsResponse>, Status> {
        let r = request.get_ref();
        let ns = namespace_filter(&r.namespace)?;
        let mut v = Violations::new();
        if !r.set_name.is_empty() {
            v.check("set_name", validate::dns1123_label(&r.set_name));
        }
        if !r.node_name.is_empty() {
            v.check("node_name", validate::dns1123_subdomain(&r.node_name));
        }
        let page = PageRequest::parse("limit", r.limit, "continue", &r.r#continue, &mut v);
        v.into_result()?;
        let set = (!r.set_name.is_empty()).then_some(r.set_name.as_str());
        let node = (!r.node_name.is_empty()).then_some(r.node_name.as_str());
        let (pods, page) = self.pods.list(ns.as_deref(), set, node, &page).await?;
        Ok(Response::new(v1::ListPodsResponse {
            pods: pods.iter().map(pod_to_api).collect(),
            r#continue: page.continue_token(),
        }))
    }

    async fn delete_pod(
        &self,
        request: Request<v1::DeletePodRequest>,
    ) -> Result<Response<v1::DeletePodResponse>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        let outcome = self
            .pods
            .delete(&ns, &r.name, r.force, r.grace_period_seconds)
            .await?;
        Ok(Response::new(v1::DeletePodResponse {
            pod: outcome.as_ref().map(pod_to_api),
            warning: if r.force {
                pods::FORCE_WARNING.into()
            } else {
                String::new()
            },
        }))
    }

    async fn pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<v1::PodLogsResponse>, Status> {
        let mut r = request.into_inner();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        let agent = self.agent_of(&ns, &r.name, "logs").await?;
        r.namespace = ns;
        agent
            .client
            .clone()
            .pod_logs(r)
            .await
            .map_err(|status| agent.unavailable(status))
    }

    type FollowPodLogsStream = AgentStream<v1::PodLogsResponse>;

    async fn follow_pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<Self::FollowPodLogsStream>, Status> {
        let mut r = request.into_inner();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        let agent = self.agent_of(&ns, &r.name, "logs").await?;
        r.namespace = ns;
        let stream = agent
            .client
            .clone()
            .follow_pod_logs(r)
            .await
            .map_err(|status| agent.unavailable(status))?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    type ExecStream = AgentStream<v1::ExecResponse>;

    async fn exec(
        &self,
        request: Request<tonic::Streaming<v1::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let mut start = petset_core::serve::opening(
            &mut input,
            |m: v1::ExecRequest| m.start,
            "the pod, the container and the command",
        )
        .await?;
        let ns = pods::parse_name(&start.namespace, &start.name)?;
        let agent = self.agent_of(&ns, &start.name, "exec").await?;
        start.namespace = ns;
        // The first message, then whatever the client sends, until it
        // stops or fails.
        let first = v1::ExecRequest {
            start: Some(start),
            ..Default::default()
        };
        let outgoing = then_the_rest(first, input);
        let output = agent
            .client
            .clone()
            .exec(outgoing)
            .await
            .map_err(|status| agent.unavailable(status))?
            .into_inner();
        Ok(Response::new(Box::pin(output)))
    }

    type PortForwardStream = AgentStream<v1::PortForwardResponse>;

    async fn port_forward(
        &self,
        request: Request<tonic::Streaming<v1::PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = request.into_inner();
        let mut start = petset_core::serve::opening(
            &mut input,
            |m: v1::PortForwardRequest| m.start,
            "the pod and the port",
        )
        .await?;
        let ns = pods::parse_name(&start.namespace, &start.name)?;
        let agent = self.agent_of(&ns, &start.name, "port-forward").await?;
        start.namespace = ns;
        let first = v1::PortForwardRequest {
            start: Some(start),
            ..Default::default()
        };
        let output = agent
            .client
            .clone()
            .port_forward(then_the_rest(first, input))
            .await
            .map_err(|status| agent.unavailable(status))?
            .into_inner();
        Ok(Response::new(Box::pin(output)))
    }
}

/// `first`, then what the client sends on `input` until it stops or fails:
/// a client's stream passed on to a node agent.
fn then_the_rest<T: Send + 'static>(first: T, mut input: tonic::Streaming<T>) -> ReceiverStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        while let Ok(Some(m)) = input.message().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A stream answered by a node agent, passed on.
pub type AgentStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// The node agent that runs a pod, as scheduler-svc reaches it.
struct PodAgent {
    client: v1::node_agent_client::NodeAgentClient<petset_core::serve::ServiceChannel>,
    node: String,
    endpoint: String,
}

impl PodAgent {
    /// `status`, said in terms of the node when its agent did not answer.
    fn unavailable(&self, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable => Status::unavailable(format!(
                "node {}'s agent at {} does not answer: {}",
                self.node,
                self.endpoint,
                status.message()
            )),
            _ => status,
        }
    }
}

impl PodsApi {
    /// The agent of the node pod `ns/name` is bound to (`what` names the
    /// call, for the error when the agent gave no address).
    async fn agent_of(&self, ns: &str, name: &str, what: &str) -> Result<PodAgent, Status> {
        let (pod, _) = self.pods.get(ns, name).await?;
        let node_name = pod.value.node.clone();
        let node: Versioned<crate::records::NodeRecord> = self
            .store
            .fetch(&Keys(&self.store).node(&node_name), "node", &node_name)
            .await?;
        let endpoint = node.value.agent_endpoint;
        if endpoint.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {ns}/{name} runs on node {node_name}, whose agent serves no {what} (it gave no address)"
            )));
        }
        let channel =
            petset_core::serve::lazy_channel("agent_endpoint", &format!("http://{endpoint}"))
                .map_err(|e| {
                    Status::internal(format!(
                        "node {node_name}'s agent address {endpoint:?}: {e}"
                    ))
                })?;
        Ok(PodAgent {
            client: v1::node_agent_client::NodeAgentClient::new(channel),
            node: node_name,
            endpoint,
        })
    }
}

/// The Nodes service.
#[derive(Debug, Clone)]
pub struct NodesApi {
    /// Registered nodes.
    pub nodes: Nodes,
    /// Pods, for reports and the node's pod stream.
    pub pods: Pods,
    /// Each node's pods, for the node's pod stream.
    pub node_pods: crate::node_pods::NodePods,
    /// Ends the pod streams when the server stops.
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl nodes_server::Nodes for NodesApi {
    async fn register_node(
        &self,
        request: Request<v1::RegisterNodeRequest>,
    ) -> Result<Response<v1::RegisterNodeResponse>, Status> {
        let r = request.get_ref();
        let registration = nodes::parse(
            &r.name,
            &r.address,
            &r.capacity,
            &r.labels,
            r.ttl_seconds,
            &r.agent_endpoint,
        )?;
        let ttl = registration.ttl;
        let lease_id = self.nodes.register(registration).await?;
        Ok(Response::new(v1::RegisterNodeResponse {
            lease_id,
            ttl_seconds: ttl,
        }))
    }

    async fn keep_alive_node(
        &self,
        request: Request<v1::KeepAliveNodeRequest>,
    ) -> Result<Response<v1::KeepAliveNodeResponse>, Status> {
        let r = request.get_ref();
        let mut v = Violations::new();
        v.check("name", validate::dns1123_subdomain(&r.name));
        if r.lease_id <= 0 {
            v.add("lease_id", "is required: the lease RegisterNode answered");
        }
        v.into_result()?;
        let ttl_seconds = self.nodes.keep_alive(&r.name, r.lease_id).await?;
        Ok(Response::new(v1::KeepAliveNodeResponse { ttl_seconds }))
    }

    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let nodes = self
            .nodes
            .list()
            .await?
            .into_iter()
            .map(|(n, ready, pods)| v1::Node {
                name: n.name,
                address: n.address,
                capacity: [
                    ("cpu".to_string(), format!("{}m", n.capacity.cpu_milli)),
                    ("memory".to_string(), format_bytes(n.capacity.memory_bytes)),
                    ("pods".to_string(), n.capacity.pods.to_string()),
                ]
                .into(),
                labels: n.labels.into_iter().collect(),
                ready,
                lease_id: n.lease_id,
                registered_at: Some(n.registered_at.into()),
                pods: pods as i32,
                agent_endpoint: n.agent_endpoint,
            })
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    type WatchNodePodsStream = EventStream<v1::NodePodsEvent>;

    async fn watch_node_pods(
        &self,
        request: Request<v1::WatchNodePodsRequest>,
    ) -> Result<Response<Self::WatchNodePodsStream>, Status> {
        let node = request.into_inner().node_name;
        let mut v = Violations::new();
        v.check("node_name", validate::dns1123_subdomain(&node));
        v.into_result()?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node_pods = self.node_pods.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut changed = node_pods.subscribe(&node).await;
            // What the agent has, by pod key and mod revision.
            let mut sent = HashMap::new();
            let mut snapshot = true;
            loop {
                // From the replica's index of pods by node: no etcd read,
                // and only this node's pods that changed.
                changed.borrow_and_update();
                let (pods, removed) = node_pods.changes(&node, &mut sent);
                if snapshot || !pods.is_empty() || !removed.is_empty() {
                    let event = v1::NodePodsEvent {
                        pods: pods
                            .into_iter()
                            .map(|pod| pod_to_api(&(pod, None)))
                            .collect(),
                        removed: removed
                            .iter()
                            .filter_map(|key| key.split_once('/'))
                            .map(|(namespace, name)| v1::PodName {
                                namespace: namespace.into(),
                                name: name.into(),
                            })
                            .collect(),
                        snapshot,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    snapshot = false;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    r = changed.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_pod_status(
        &self,
        request: Request<v1::ReportPodStatusRequest>,
    ) -> Result<Response<v1::Pod>, Status> {
        let r = request.get_ref();
        let ns = pods::parse_name(&r.namespace, &r.name)?;
        let status = r
            .status
            .clone()
            .ok_or_else(|| Error::invalid("status", "is required"))?;
        let reported = self
            .pods
            .report(&ns, &r.name, r.incarnation, &status)
            .await?;
        Ok(Response::new(pod_to_api(&reported)))
    }
}

/// The Cluster service: where the other services are.
#[derive(Debug, Clone)]
pub struct ClusterApi {
    /// identity-svc's URL.
    pub identity_addr: String,
    /// storage-svc's URL.
    pub storage_addr: String,
    /// This replica.
    pub replica: String,
    /// For the leader key.
    pub store: Store,
    /// This replica's HTTP API.
    pub api_http_addr: String,
}

#[tonic::async_trait]
impl v1::cluster_server::Cluster for ClusterApi {
    async fn get_cluster_info(
        &self,
        _: Request<v1::GetClusterInfoRequest>,
    ) -> Result<Response<v1::ClusterInfo>, Status> {
        let leader = self
            .store
            .get::<crate::records::LeaderRecord>(&Keys(&self.store).leader())
            .await?
            .map(|l| l.value.id)
            .unwrap_or_default();
        Ok(Response::new(v1::ClusterInfo {
            identity_addr: self.identity_addr.clone(),
            storage_addr: self.storage_addr.clone(),
            replica: self.replica.clone(),
            leader,
            api_http_addr: self.api_http_addr.clone(),
        }))
    }
}
