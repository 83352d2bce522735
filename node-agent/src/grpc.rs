//! `petset.v1.NodeAgent`: what this node serves to petctl (pod logs).

use std::sync::Arc;

use petset_core::error::Violations;
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::node_agent_server::NodeAgent;
use tonic::{Request, Response, Status};

use crate::pods::Context;

/// `petset.v1.NodeAgent`: pod logs from this node.
#[derive(Debug, Clone)]
pub(crate) struct LogsApi {
    pub(crate) ctx: Arc<Context>,
}

#[tonic::async_trait]
impl NodeAgent for LogsApi {
    async fn pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<v1::PodLogsResponse>, Status> {
        let r = request.into_inner();
        let namespace = validate::namespace_or_default(&r.namespace);
        let mut v = Violations::new();
        v.check("namespace", validate::dns1123_label(&namespace));
        v.check("name", validate::dns1123_label(&r.name));
        if !r.container.is_empty() {
            v.check("container", validate::dns1123_label(&r.container));
        }
        if r.tail_lines < 0 {
            v.add("tail_lines", "must be 0 or more");
        }
        v.into_result()?;
        let dir = self.ctx.pod_dir(&namespace, &r.name);
        let container = if r.container.is_empty() {
            let mut entries = tokio::fs::read_dir(&dir).await.map_err(|_| {
                Status::not_found(format!(
                    "pod {namespace}/{} has no logs on node {}",
                    r.name, self.ctx.node
                ))
            })?;
            let mut logs: Vec<String> = Vec::new();
            while let Ok(Some(entry)) = entries.next_entry().await {
                if let Some(container) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .filter(|c| !c.ends_with(".previous"))
                {
                    logs.push(container.to_string());
                }
            }
            logs.sort();
            logs.into_iter().next().ok_or_else(|| {
                Status::not_found(format!("pod {namespace}/{} has no logs yet", r.name))
            })?
        } else {
            r.container.clone()
        };
        let file = dir.join(if r.previous {
            format!("{container}.previous.log")
        } else {
            format!("{container}.log")
        });
        let text = tokio::fs::read_to_string(&file).await.map_err(|_| {
            Status::not_found(format!(
                "no {}logs for container {container} of pod {namespace}/{}",
                if r.previous { "previous " } else { "" },
                r.name
            ))
        })?;
        let text = if r.tail_lines > 0 {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(r.tail_lines as usize);
            lines[from..].iter().map(|l| format!("{l}\n")).collect()
        } else {
            text
        };
        Ok(Response::new(v1::PodLogsResponse { container, text }))
    }
}
