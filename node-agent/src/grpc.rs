//! `petset.v1.NodeAgent`: what this node serves to petctl through
//! scheduler-svc (pod logs, exec).

use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use petset_core::error::Violations;
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::node_agent_server::NodeAgent;
use tonic::{Request, Response, Status, Streaming};

use crate::pods::Context;

/// `petset.v1.NodeAgent`: pod logs from this node, commands in its pods.
#[derive(Debug, Clone)]
pub(crate) struct LogsApi {
    pub(crate) ctx: Arc<Context>,
}

/// The output of an exec, as it comes.
type ExecOutput = Pin<Box<dyn Stream<Item = Result<v1::ExecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for LogsApi {
    type ExecStream = ExecOutput;

    type PortForwardStream =
        Pin<Box<dyn Stream<Item = Result<v1::PortForwardResponse, Status>> + Send>>;

    async fn port_forward(
        &self,
        request: Request<Streaming<v1::PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = request.into_inner();
        let start = petset_core::serve::opening(
            &mut input,
            |m: v1::PortForwardRequest| m.start,
            "the pod and the port",
        )
        .await?;
        let namespace = validate::namespace_or_default(&start.namespace);
        let mut v = Violations::new();
        v.check("start.namespace", validate::dns1123_label(&namespace));
        v.check("start.name", validate::dns1123_label(&start.name));
        v.check("start.port", validate::port(start.port.into()));
        v.into_result()?;
        let pod = format!("{namespace}/{}", start.name);
        let ip = self.ctx.running_pod_ip(&pod).ok_or_else(|| {
            Status::not_found(format!(
                "pod {pod} has no running container on node {}",
                self.ctx.node
            ))
        })?;
        let target = std::net::SocketAddr::new(ip, start.port as u16);
        let stream = tokio::net::TcpStream::connect(target).await.map_err(|e| {
            Status::unavailable(format!(
                "pod {pod}: cannot connect to port {}: {e}",
                start.port
            ))
        })?;
        let (mut from_pod, to_pod) = stream.into_split();
        // The client's end of writing is the pod's end of reading.
        tokio::spawn(feed(input, to_pod, |m: &v1::PortForwardRequest| {
            (m.data.clone(), m.closed)
        }));
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            pump(Some(&mut from_pod), tx, |data| v1::PortForwardResponse {
                data,
            })
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        request: Request<Streaming<v1::ExecRequest>>,
    ) -> Result<Response<ExecOutput>, Status> {
        let mut input = request.into_inner();
        let start = petset_core::serve::opening(
            &mut input,
            |m: v1::ExecRequest| m.start,
            "the container and the command",
        )
        .await?;
        let namespace = validate::namespace_or_default(&start.namespace);
        let mut v = Violations::new();
        v.check("start.namespace", validate::dns1123_label(&namespace));
        v.check("start.name", validate::dns1123_label(&start.name));
        if !start.container.is_empty() {
            v.check("start.container", validate::dns1123_label(&start.container));
        }
        if start.command.is_empty() || start.command[0].is_empty() {
            v.add(
                "start.command",
                "is required: the program to run and its arguments",
            );
        }
        v.into_result()?;
        let pod = format!("{namespace}/{}", start.name);
        let (container, target) =
            self.ctx
                .exec_target(&pod, &start.container)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "pod {pod} has no running container{} on node {}",
                        if start.container.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", start.container)
                        },
                        self.ctx.node
                    ))
                })?;
        if let crate::runtime::Exec::Docker(docker) = &target {
            tracing::info!(%pod, %container, command = ?start.command, tty = start.tty, "exec (engine)");
            let session = docker
                .session(&start.command, start.stdin, start.tty, start.size.as_ref())
                .await
                .map_err(|e| {
                    Status::failed_precondition(format!(
                        "container {container} of pod {pod}: {}",
                        e.0
                    ))
                })?;
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(feed_engine(
                input,
                session.input,
                session.handle.clone(),
                start.stdin,
                start.tty,
            ));
            tokio::spawn(relay_engine(session.output, session.handle, tx));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let mut command = target.command(&start.command, start.tty).map_err(|e| {
            Status::failed_precondition(format!("container {container} of pod {pod}: {}", e.0))
        })?;
        let cannot_run = |e: std::io::Error| {
            Status::failed_precondition(format!("cannot run {:?}: {e}", start.command[0]))
        };
        tracing::info!(%pod, %container, command = ?start.command, tty = start.tty, "exec");
        if start.tty {
            let pty = crate::terminal::Pty::open().map_err(cannot_run)?;
            pty.attach(&mut command).map_err(cannot_run)?;
            let child = command.kill_on_drop(true).spawn().map_err(cannot_run)?;
            let crate::terminal::Pty { master, slave } = pty;
            // Only the command holds the slave now: its end ends the output.
            drop(slave);
            if let Some(size) = &start.size {
                crate::terminal::Pty::resize(&master, size);
            }
            let reader = std::fs::File::from(master.try_clone().map_err(cannot_run)?);
            let writer = std::fs::File::from(master.try_clone().map_err(cannot_run)?);
            tokio::spawn(feed_terminal(
                input,
                tokio::fs::File::from_std(writer),
                master,
                start.stdin,
            ));
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(finish(
                child,
                tx.clone(),
                pump(Some(tokio::fs::File::from_std(reader)), tx, |b| {
                    v1::ExecResponse {
                        stdout: b,
                        ..Default::default()
                    }
                }),
            ));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let mut child = command
            .stdin(if start.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(cannot_run)?;
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(feed(input, stdin, |m: &v1::ExecRequest| {
                (m.stdin.clone(), m.stdin_closed)
            }));
        }
        let (tx, rx) = mpsc::channel(16);
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let pumps = {
            let tx = tx.clone();
            async move {
                let (out, err) = tokio::join!(
                    pump(out, tx.clone(), |b| v1::ExecResponse {
                        stdout: b,
                        ..Default::default()
                    }),
                    pump(err, tx, |b| v1::ExecResponse {
                        stderr: b,
                        ..Default::default()
                    }),
                );
                out && err
            }
        };
        tokio::spawn(finish(child, tx, pumps));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<v1::PodLogsResponse>, Status> {
        let r = request.into_inner();
        let (container, file) = self.log_file(&r).await?;
        let text = tokio::fs::read_to_string(&file)
            .await
            .map_err(|_| no_logs(&r, &container))?;
        Ok(Response::new(v1::PodLogsResponse {
            container,
            text: tail(text, r.tail_lines),
        }))
    }

    type FollowPodLogsStream =
        Pin<Box<dyn Stream<Item = Result<v1::PodLogsResponse, Status>> + Send>>;

    async fn follow_pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<Self::FollowPodLogsStream>, Status> {
        let r = request.into_inner();
        if r.previous {
            return Err(Status::invalid_argument(
                "previous: a previous run's log does not grow; ask PodLogs",
            ));
        }
        let (container, path) = self.log_file(&r).await?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| no_logs(&r, &container))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .await
            .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))?;
        let first = tail(text, r.tail_lines);
        let pod = format!(
            "{}/{}",
            validate::namespace_or_default(&r.namespace),
            r.name
        );
        let ctx = self.ctx.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let send = |text: String| {
                let tx = tx.clone();
                let container = container.clone();
                async move {
                    tx.send(Ok(v1::PodLogsResponse { container, text }))
                        .await
                        .is_ok()
                }
            };
            if !first.is_empty() && !send(first).await {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                // Whether the container still runs, asked before reading:
                // what it wrote before it ended is read after.
                let running = ctx.exec_target(&pod, &container).is_some();
                let mut read = Vec::new();
                while let Ok(n) = file.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    read.extend_from_slice(&buf[..n]);
                }
                if !read.is_empty() && !send(String::from_utf8_lossy(&read).into_owned()).await {
                    return;
                }
                // Ended, or restarted (its log moved to .previous.log).
                if !running || !same_file(&file, &path).await {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_PERIOD) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How often a followed log is looked at for more.
const FOLLOW_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

impl LogsApi {
    /// The container a logs request means (its only or first one when it
    /// names none) and its log file on this node.
    async fn log_file(
        &self,
        r: &v1::PodLogsRequest,
    ) -> Result<(String, std::path::PathBuf), Status> {
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
        Ok((container, file))
    }
}

/// NOT_FOUND for a container's log that is not there.
fn no_logs(r: &v1::PodLogsRequest, container: &str) -> Status {
    Status::not_found(format!(
        "no {}logs for container {container} of pod {}/{}",
        if r.previous { "previous " } else { "" },
        validate::namespace_or_default(&r.namespace),
        r.name
    ))
}

/// The last `lines` lines of `text` (all of it for 0).
fn tail(text: String, lines: i64) -> String {
    if lines <= 0 {
        return text;
    }
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines as usize);
    all[from..].iter().map(|l| format!("{l}\n")).collect()
}

/// Whether `path` is still the file `file` has open (a restart moves the
/// log aside and starts a new one).
async fn same_file(file: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(open), Ok(now)) => open.ino() == now.ino() && open.dev() == now.dev(),
        _ => false,
    }
}

/// Waits for the output to be sent (`output`: whether the caller is still
/// there), then for the command, and sends its exit code; a caller gone
/// drops the child, which kills it.
async fn finish(
    mut child: tokio::process::Child,
    tx: mpsc::Sender<Result<v1::ExecResponse, Status>>,
    output: impl std::future::Future<Output = bool>,
) {
    if !output.await {
        return;
    }
    let code = match child.wait().await {
        Ok(status) => status.code().unwrap_or(-1),
        Err(_) => -1,
    };
    let _ = tx
        .send(Ok(v1::ExecResponse {
            exit_code: Some(code),
            ..Default::default()
        }))
        .await;
}

/// A terminal's input: the client's keys (when it passes standard input)
/// and its size changes. The end of its input is said as a terminal says
/// it, with Ctrl-D.
async fn feed_terminal(
    mut input: Streaming<v1::ExecRequest>,
    mut to: tokio::fs::File,
    master: std::os::fd::OwnedFd,
    stdin: bool,
) {
    while let Ok(Some(m)) = input.message().await {
        if let Some(size) = &m.resize {
            crate::terminal::Pty::resize(&master, size);
        }
        if stdin && !m.stdin.is_empty() && to.write_all(&m.stdin).await.is_err() {
            return;
        }
        if stdin && m.stdin_closed {
            let _ = to.write_all(&[4]).await;
            let _ = to.flush().await;
        }
    }
}

/// A Docker-runtime exec's input: the client's bytes and terminal sizes;
/// the end of its input closes the command's (on a terminal, Ctrl-D).
async fn feed_engine(
    mut input: Streaming<v1::ExecRequest>,
    mut to: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    handle: crate::runtime::docker::ExecHandle,
    stdin: bool,
    tty: bool,
) {
    while let Ok(Some(m)) = input.message().await {
        if let Some(size) = &m.resize {
            handle.resize(size).await;
        }
        if !stdin {
            continue;
        }
        if !m.stdin.is_empty() && to.write_all(&m.stdin).await.is_err() {
            return;
        }
        if m.stdin_closed {
            if tty {
                let _ = to.write_all(&[4]).await;
                let _ = to.flush().await;
            } else {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}

/// A Docker-runtime exec's output, then its exit code, to the client.
async fn relay_engine(
    mut output: crate::runtime::docker::SessionOutput,
    handle: crate::runtime::docker::ExecHandle,
    tx: mpsc::Sender<Result<v1::ExecResponse, Status>>,
) {
    use bollard::container::LogOutput;
    use futures::StreamExt as _;
    while let Some(Ok(part)) = output.next().await {
        let answer = match part {
            LogOutput::StdOut { message } | LogOutput::Console { message } => v1::ExecResponse {
                stdout: message.to_vec(),
                ..Default::default()
            },
            LogOutput::StdErr { message } => v1::ExecResponse {
                stderr: message.to_vec(),
                ..Default::default()
            },
            LogOutput::StdIn { .. } => continue,
        };
        if tx.send(Ok(answer)).await.is_err() {
            return;
        }
    }
    let code = handle
        .exit_code()
        .await
        .ok()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1);
    let _ = tx
        .send(Ok(v1::ExecResponse {
            exit_code: Some(code),
            ..Default::default()
        }))
        .await;
}

/// Writes what the client sends on `input` (each message's bytes, and
/// whether it is the last) to `to` until the client ends or says so; then
/// shuts `to` for writing, so its reader sees the end.
async fn feed<T>(
    mut input: Streaming<T>,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    parts: impl Fn(&T) -> (Vec<u8>, bool),
) {
    while let Ok(Some(m)) = input.message().await {
        let (bytes, last) = parts(&m);
        if !bytes.is_empty() && to.write_all(&bytes).await.is_err() {
            return;
        }
        if last {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Sends what `from` gives, chunk by chunk, until its end; false when the
/// receiver went away.
async fn pump<M>(
    from: Option<impl AsyncRead + Unpin>,
    to: mpsc::Sender<Result<M, Status>>,
    message: impl Fn(Vec<u8>) -> M,
) -> bool {
    let Some(mut from) = from else { return true };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if to.send(Ok(message(buf[..n].to_vec()))).await.is_err() {
                    return false;
                }
            }
        }
    }
}
