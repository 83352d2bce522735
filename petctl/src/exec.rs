//! `petctl exec`: a command in a pod's container, as `kubectl exec` runs
//! it. scheduler-svc passes the stream to the node agent that runs the pod
//! (as the API server passes exec to the kubelet); the agent runs the
//! command in the container's namespaces with its environment.

use std::io::{Read as _, Write as _};

use anyhow::{Result, bail};
use petset_proto::v1;
use tokio_stream::wrappers::ReceiverStream;

use crate::Clients;

/// The command ran and ended with a non-zero code: petctl ends with it.
#[derive(Debug)]
pub struct Exited(pub i32);

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command terminated with exit code {}", self.0)
    }
}

impl std::error::Error for Exited {}

/// What to run, and where.
pub struct ExecArgs {
    /// The pod.
    pub pod: String,
    /// Its container; `None`: the first.
    pub container: Option<String>,
    /// Pass standard input.
    pub stdin: bool,
    /// A terminal.
    pub tty: bool,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// This terminal in raw mode (keys go to the remote terminal as typed);
/// restored when dropped.
struct Raw(rustix::termios::Termios);

impl Raw {
    /// Raw mode on standard input, when it is a terminal.
    fn enter() -> Option<Raw> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Raw(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// This terminal's size, when standard output is one.
fn terminal_size() -> Option<v1::TerminalSize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some(v1::TerminalSize {
        cols: size.ws_col.into(),
        rows: size.ws_row.into(),
    })
}

/// Runs the command; `Ok` when it ended with 0, [`Exited`] otherwise.
pub async fn exec(c: &Clients, args: ExecArgs) -> Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let start = v1::ExecRequest {
        start: Some(v1::ExecStart {
            namespace: c.namespace.clone(),
            name: args.pod.clone(),
            container: args.container.unwrap_or_default(),
            command: args.command,
            stdin: args.stdin,
            tty: args.tty,
            size: if args.tty { terminal_size() } else { None },
        }),
        ..Default::default()
    };
    tx.send(start).await?;
    // With -t and -i on a terminal, keys go through as typed (Ctrl-C to the
    // remote command, not to petctl).
    let _raw = (args.tty && args.stdin).then(Raw::enter).flatten();
    if args.tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut changes) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while changes.recv().await.is_some() {
                let resize = v1::ExecRequest {
                    resize: terminal_size(),
                    ..Default::default()
                };
                if tx.send(resize).await.is_err() {
                    return;
                }
            }
        });
    }
    if args.stdin {
        // A thread of its own: a read of a terminal blocks until a line
        // comes, and must not hold petctl open once the command ended.
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let message = match input.read(&mut buf) {
                    Ok(0) | Err(_) => v1::ExecRequest {
                        stdin_closed: true,
                        ..Default::default()
                    },
                    Ok(n) => v1::ExecRequest {
                        stdin: buf[..n].to_vec(),
                        ..Default::default()
                    },
                };
                let last = message.stdin_closed;
                if tx.blocking_send(message).is_err() || last {
                    return;
                }
            }
        });
    } else {
        drop(tx);
    }
    let mut output = c
        .pods()
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(crate::explain)?
        .into_inner();
    let mut code = None;
    while let Some(m) = output.message().await.map_err(crate::explain)? {
        if !m.stdout.is_empty() {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&m.stdout).and_then(|()| out.flush()) {
                crate::output_failed(e);
            }
        }
        if !m.stderr.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&m.stderr).and_then(|()| err.flush());
        }
        if let Some(c) = m.exit_code {
            code = Some(c);
        }
    }
    match code {
        Some(0) => Ok(()),
        Some(n) => Err(Exited(n).into()),
        None => bail!("the command's end was not reported: the connection to its node broke"),
    }
}
