//! `fleet exec`: runs a command in one of this node's running containers (`runc exec`), with
//! the client's stdin, stdout and stderr carried as frames over the stream the hub opened.
//! Terminals (`-t`) are refused for now: runc 1.1 hands out a pty only to a detached exec,
//! whose exit code the agent could then not collect.
use crate::Shared;
use flotilla_proto::wire::{ExecInput, ExecOutput, ExecRequest, Response};
use flotilla_transport::{TransportError, recv_frame, send_frame};
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let pod = shared.cache.pods().ok().and_then(|pods| {
        pods.into_values()
            .find(|p| p.namespace() == req.namespace && p.metadata.name == req.name)
    });
    let Some(pod) = pod else {
        return refuse(
            send,
            format!("pod {}/{} is not on this node", req.namespace, req.name),
        )
        .await;
    };
    let container = match &req.container {
        Some(c) => pod.spec.containers.iter().find(|x| &x.name == c),
        None => pod.spec.containers.first(),
    };
    let Some(container) = container else {
        let names: Vec<&str> = pod
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return refuse(
            send,
            format!(
                "container {:?} is not valid for pod {} (containers: {})",
                req.container.as_deref().unwrap_or(""),
                req.name,
                names.join(", ")
            ),
        )
        .await;
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
    if req.tty {
        return refuse(
            send,
            "exec with a terminal (-t) is not supported yet; run without -t".into(),
        )
        .await;
    }
    info!(pod = %req.name, container = %container.name, command = ?req.command, "exec");
    let mut cmd = rt.exec_command(&id, &req.command);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    send_frame(&mut send, &Response::ExecStream).await?;

    let (out_tx, mut out_rx) = mpsc::channel::<ExecOutput>(16);
    let mut stdin_pipe = child.stdin.take();
    let mut pumps = Vec::new();
    if let Some(o) = child.stdout.take() {
        pumps.push(pump(o, out_tx.clone(), ExecOutput::Stdout));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(pump(e, out_tx.clone(), ExecOutput::Stderr));
    }
    drop(out_tx);
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
                // Without a terminal there is nothing to resize.
                Ok(Some(ExecInput::Resize { .. })) => {}
                Ok(Some(ExecInput::StdinClosed)) | Ok(None) | Err(_) => {
                    input_open = false;
                    stdin_pipe = None;
                }
            },
            Some(out) = out_rx.recv() => send_frame(&mut send, &out).await?,
            status = child.wait() => break status?,
        }
    };
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
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    to: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.send(wrap(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
