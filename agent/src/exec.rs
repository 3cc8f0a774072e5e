//! `fleet exec`: runs a command in one of this node's running containers (`runc exec`), with
//! the client's stdin, stdout and stderr carried as frames over the stream the hub opened.
//! Terminals (`-t`) are refused for now: runc 1.1 hands out a pty only to a detached exec,
//! whose exit code the agent could then not collect.
use crate::Shared;
use flotilla_proto::wire::{ExecInput, ExecOutput, ExecRequest, Response};
use flotilla_transport::{TransportError, recv_frame, send_frame};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, info};

async fn refuse(mut send: quinn::SendStream, message: String) -> Result<(), TransportError> {
    send_frame(&mut send, &Response::Error { message }).await?;
    let _ = send.finish();
    Ok(())
}

/// Serves one exec stream until the command exits.
pub async fn serve(
    shared: &Shared,
    req: ExecRequest,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), TransportError> {
    let rt = match &shared.containers {
        Ok(rt) => rt,
        Err(e) => return refuse(send, format!("this node runs no containers: {e}")).await,
    };
    let Some(pod) = shared.pod_named(&req.namespace, &req.name) else {
        return refuse(
            send,
            format!("pod {}/{} is not on this node", req.namespace, req.name),
        )
        .await;
    };
    let container = match crate::pick_container(&pod, req.container.as_deref()) {
        Ok(c) => c,
        Err(e) => return refuse(send, e).await,
    };
    if req.command.is_empty() {
        return refuse(send, "exec needs a command".into()).await;
    }
    let id = format!("{}-{}", pod.metadata.uid, container.name);
    if !rt.list().await.contains(&id) {
        return refuse(
            send,
            format!(
                "container {} of pod {} is not running (a WASI pod has no container to exec into)",
                container.name, req.name
            ),
        )
        .await;
    }
    info!(pod = %req.name, container = %container.name, command = ?req.command, tty = req.tty, "exec");
    let (mut cmd, mut guard) = rt.exec_command(&id, &req.command, req.tty);
    let terminal = if req.tty {
        let (master, slave) = match open_pty() {
            Ok(p) => p,
            Err(e) => return refuse(send, format!("cannot allocate a terminal: {e}")).await,
        };
        // runc takes the terminal as its own: it relays it to the container's terminal and
        // follows its size when told (SIGWINCH).
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        Some(master)
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };
    send_frame(&mut send, &Response::ExecStream).await?;
    // The client's terminal size comes first; the command starts with it.
    let mut early = None;
    if let Some(master) = &terminal {
        match tokio::time::timeout(Duration::from_secs(2), recv_frame::<ExecInput>(&mut recv)).await
        {
            Ok(Ok(Some(ExecInput::Resize { cols, rows }))) => set_size(master, cols, rows),
            Ok(Ok(Some(other))) => early = Some(other),
            _ => {}
        }
    }
    let mut child = cmd.spawn()?;
    guard.spawned(child.id());
    // The agent's copies of the terminal's other end go, so its end reads EOF with runc's.
    drop(cmd);

    let (out_tx, mut out_rx) = mpsc::channel::<ExecOutput>(16);
    let mut stdin_pipe: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    let mut pumps = Vec::new();
    if let Some(master) = &terminal {
        let file = std::fs::File::from(master.try_clone()?);
        let reader = tokio::fs::File::from_std(file.try_clone()?);
        pumps.push(pump(reader, out_tx.clone(), ExecOutput::Stdout));
        stdin_pipe = Some(Box::new(tokio::fs::File::from_std(file)));
    }
    if let Some(i) = child.stdin.take() {
        stdin_pipe = Some(Box::new(i));
    }
    if let Some(o) = child.stdout.take() {
        pumps.push(pump(o, out_tx.clone(), ExecOutput::Stdout));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(pump(e, out_tx.clone(), ExecOutput::Stderr));
    }
    drop(out_tx);
    if let Some(ExecInput::Stdin(bytes)) = early
        && let Some(p) = &mut stdin_pipe
    {
        let _ = p.write_all(&bytes).await;
    }
    let mut input_open = true;
    let status = loop {
        tokio::select! {
            frame = recv_frame::<ExecInput>(&mut recv), if input_open => match frame {
                Ok(Some(ExecInput::Stdin(bytes))) => {
                    let ok = match &mut stdin_pipe {
                        Some(p) => p.write_all(&bytes).await.is_ok(),
                        None => false,
                    };
                    if !ok {
                        debug!("exec stdin closed by the command");
                    }
                }
                Ok(Some(ExecInput::Resize { cols, rows })) => {
                    // Without a terminal there is nothing to resize.
                    if let (Some(master), Some(pid)) = (&terminal, child.id()) {
                        set_size(master, cols, rows);
                        let pid = nix::unistd::Pid::from_raw(pid as i32);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH);
                    }
                }
                Ok(Some(ExecInput::StdinClosed)) | Ok(None) | Err(_) => {
                    input_open = false;
                    // A terminal stays: closing it would hang up the command.
                    if terminal.is_none() {
                        stdin_pipe = None;
                    }
                }
            },
            Some(out) = out_rx.recv() => send_frame(&mut send, &out).await?,
            status = child.wait() => break status?,
        }
    };
    guard.finished();
    // What the command wrote before exiting still goes out before its exit code.
    while let Ok(Some(out)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), out_rx.recv()).await
    {
        send_frame(&mut send, &out).await?;
    }
    for p in pumps {
        p.abort();
    }
    let code = crate::runtime::oci::exit_code(&status);
    send_frame(&mut send, &ExecOutput::Exit(code)).await?;
    let _ = send.finish();
    Ok(())
}

fn pump(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    to: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt as _;
    tokio::spawn(async move {
        let mut chunks = tokio_util::io::ReaderStream::new(from);
        while let Some(Ok(bytes)) = chunks.next().await {
            if to.send(wrap(bytes.to_vec())).await.is_err() {
                return;
            }
        }
    })
}

/// A new pseudo-terminal: (the agent's end, the end runc gets as its stdio).
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((master, slave))
}

fn set_size(master: &OwnedFd, cols: u16, rows: u16) {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if let Err(e) = rustix::termios::tcsetwinsize(master, size) {
        debug!(error = %e, "cannot resize the exec terminal");
    }
}
