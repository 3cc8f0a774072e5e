//! A connection to the hub with the admin credential, and one method per API request.
use anyhow::{Context as _, bail};
use flotilla_hub::config::ClientFile;
use flotilla_proto::api::{Deployment, Kind, Object, ReplicaSet, StatefulSet};
use flotilla_proto::wire::{
    Applied, Edit, LogsRequest, PropagationPolicy, Request, Response, RolloutAction,
};
use flotilla_transport::send_frame;
use sha2::{Digest, Sha256};
use std::net::ToSocketAddrs;
use tokio::io::AsyncWriteExt;

pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

fn unexpected(r: Response) -> anyhow::Error {
    match r {
        Response::Error { message } => anyhow::anyhow!("{message}"),
        other => anyhow::anyhow!("unexpected answer from hub: {other:?}"),
    }
}

impl Client {
    pub async fn connect(cfg: &ClientFile) -> anyhow::Result<Client> {
        flotilla_transport::install_crypto_provider();
        let addr = cfg
            .hub
            .to_socket_addrs()
            .with_context(|| format!("invalid hub address {:?}", cfg.hub))?
            .next()
            .with_context(|| format!("hub address {:?} did not resolve", cfg.hub))?;
        let tls = flotilla_transport::client_config(&cfg.ca, &cfg.cert, &cfg.key)?;
        let (endpoint, conn) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            flotilla_transport::connect(addr, tls),
        )
        .await
        .with_context(|| format!("timed out connecting to hub {addr}"))?
        .with_context(|| format!("failed to connect to hub {addr}"))?;
        Ok(Client { endpoint, conn })
    }

    async fn call(&self, req: &Request) -> anyhow::Result<Response> {
        let (_s, _r, resp) = flotilla_transport::request(&self.conn, req).await?;
        Ok(resp)
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }

    /// Applies objects (already parsed and validated locally; the hub validates again).
    pub async fn apply(&self, objects: &[Object]) -> anyhow::Result<Vec<Applied>> {
        let objects = objects.iter().map(|o| o.to_json_string()).collect();
        match self.call(&Request::Apply { objects }).await? {
            Response::Applied { results } => Ok(results),
            r => Err(unexpected(r)),
        }
    }

    /// Parses manifest text and applies it; returns warnings and results.
    pub async fn apply_text(&self, text: &str) -> anyhow::Result<(Vec<String>, Vec<Applied>)> {
        let parsed = flotilla_proto::manifest::parse(text).map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let warnings = parsed.iter().flat_map(|p| p.warnings.clone()).collect();
        let objects: Vec<Object> = parsed.into_iter().map(|p| p.object).collect();
        Ok((warnings, self.apply(&objects).await?))
    }

    pub async fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> anyhow::Result<Vec<Object>> {
        let req = Request::Get {
            kind,
            namespace: namespace.map(String::from),
            name: name.map(String::from),
        };
        match self.call(&req).await? {
            Response::Objects { items, .. } => items
                .iter()
                .map(|j| Object::from_json_str(j).context("hub sent an unreadable object"))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    pub async fn pods(
        &self,
        namespace: Option<&str>,
    ) -> anyhow::Result<Vec<flotilla_proto::api::Pod>> {
        Ok(self
            .get(Kind::Pod, namespace, None)
            .await?
            .into_iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .collect())
    }

    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> anyhow::Result<()> {
        match self
            .call(&Request::Delete {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            })
            .await?
        {
            Response::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Deletes with a propagation policy (`--cascade`). Background goes as a plain `Delete`,
    /// which every hub understands.
    pub async fn delete_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        propagation: PropagationPolicy,
    ) -> anyhow::Result<()> {
        let req = match propagation {
            PropagationPolicy::Background => Request::Delete {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            },
            propagation => Request::DeleteWith {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                propagation,
            },
        };
        match self.call(&req).await? {
            Response::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// A rollout change (`fleet rollout …`, `fleet set image`); returns the hub's message.
    pub async fn rollout(
        &self,
        namespace: &str,
        name: &str,
        action: RolloutAction,
    ) -> anyhow::Result<String> {
        match self
            .call(&Request::Rollout {
                namespace: namespace.into(),
                name: name.into(),
                action,
            })
            .await?
        {
            Response::Done { message } => Ok(message),
            r => Err(unexpected(r)),
        }
    }

    /// `fleet label|taint|cordon|uncordon|scale`; returns the hub's message.
    pub async fn edit(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        edit: Edit,
    ) -> anyhow::Result<String> {
        match self
            .call(&Request::Edit {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                edit,
            })
            .await?
        {
            Response::Done { message } => Ok(message),
            r => Err(unexpected(r)),
        }
    }

    /// Asks the hub to evict a pod: `Ok(Ok(message))` when it is gone, `Ok(Err(reason))` when a
    /// disruption budget forbids it for now.
    pub async fn evict(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Result<String, String>> {
        match self
            .call(&Request::Evict {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await?
        {
            Response::Done { message } => Ok(Ok(message)),
            Response::Retry { message } => Ok(Err(message)),
            r => Err(unexpected(r)),
        }
    }

    /// One Deployment and the ReplicaSets it controls.
    pub async fn deployment_with_history(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<(Deployment, Vec<ReplicaSet>)> {
        let d = match self
            .get(Kind::Deployment, Some(namespace), Some(name))
            .await?
            .pop()
        {
            Some(Object::Deployment(d)) => d,
            _ => bail!("deployments.apps \"{name}\" not found"),
        };
        let rss = d.history(self.get(Kind::ReplicaSet, Some(namespace), None).await?);
        Ok((d, rss))
    }

    pub async fn statefulset(&self, namespace: &str, name: &str) -> anyhow::Result<StatefulSet> {
        match self
            .get(Kind::StatefulSet, Some(namespace), Some(name))
            .await?
            .pop()
        {
            Some(Object::StatefulSet(s)) => Ok(s),
            _ => bail!("statefulsets.apps \"{name}\" not found"),
        }
    }

    pub async fn scale(&self, namespace: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
        match self
            .call(&Request::Scale {
                namespace: namespace.into(),
                name: name.into(),
                replicas,
            })
            .await?
        {
            Response::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub async fn create_token(
        &self,
        ttl_secs: Option<u64>,
        max_uses: Option<u32>,
    ) -> anyhow::Result<String> {
        match self
            .call(&Request::CreateToken { ttl_secs, max_uses })
            .await?
        {
            Response::Token { token } => Ok(token),
            r => Err(unexpected(r)),
        }
    }

    /// Uploads a wasm file as `name:tag`; returns its digest.
    pub async fn push(&self, bytes: &[u8], name: &str, tag: &str) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let (mut send, mut recv) = self.conn.open_bi().await?;
        let req = Request::PushBlob {
            name: name.into(),
            tag: tag.into(),
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        send_frame(&mut send, &req).await?;
        send.write_all(bytes).await?;
        let _ = send.finish();
        match flotilla_transport::recv_frame::<Response>(&mut recv)
            .await?
            .context("hub closed the stream")?
        {
            Response::Pushed { digest } => Ok(digest),
            r => Err(unexpected(r)),
        }
    }

    /// Streams a pod's default container's log into `out` (until the end, or forever with
    /// `follow`).
    pub async fn logs(
        &self,
        namespace: &str,
        name: &str,
        tail: Option<u32>,
        follow: bool,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> anyhow::Result<()> {
        let req = LogsRequest::current(namespace.into(), name.into(), tail, follow);
        self.container_logs(req, out).await
    }

    /// Streams a container's log (`fleet logs POD [-c C] [--previous]`) into `out`.
    pub async fn container_logs(
        &self,
        req: LogsRequest,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> anyhow::Result<()> {
        let (_send, mut recv, resp) =
            flotilla_transport::request::<_, Response>(&self.conn, &Request::ContainerLogs(req))
                .await?;
        if resp != Response::LogStream {
            bail!(unexpected(resp));
        }
        let mut buf = vec![0u8; 16 * 1024];
        while let Some(n) = recv.read(&mut buf).await? {
            out.write_all(&buf[..n]).await?;
            out.flush().await?;
        }
        Ok(())
    }

    /// Runs a command in a pod's container (`fleet exec`): `stdin` (when given) is sent to it
    /// as it arrives, its output goes to `stdout`/`stderr`; returns its exit code. `size` is
    /// the terminal's (cols, rows) when `req.tty`; `resizes` delivers later changes.
    pub async fn exec(
        &self,
        req: flotilla_proto::wire::ExecRequest,
        stdin: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
        size: Option<(u16, u16)>,
        mut resizes: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
        stdout: &mut (impl tokio::io::AsyncWrite + Unpin),
        stderr: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> anyhow::Result<i32> {
        use flotilla_proto::wire::{ExecInput, ExecOutput};
        use flotilla_transport::{recv_frame, send_frame};
        use tokio::io::AsyncReadExt as _;
        let (mut send, mut recv, resp) =
            flotilla_transport::request::<_, Response>(&self.conn, &Request::Exec(req)).await?;
        if resp != Response::ExecStream {
            bail!(unexpected(resp));
        }
        if let Some((cols, rows)) = size {
            send_frame(&mut send, &ExecInput::Resize { cols, rows }).await?;
        }
        let input = async move {
            let mut stdin = stdin;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let read = async {
                    match stdin.as_mut() {
                        Some(s) => s.read(&mut buf).await.ok(),
                        None => Some(0),
                    }
                };
                let resize = async {
                    match resizes.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = read => match n {
                        Some(0) | None => {
                            let _ = send_frame(&mut send, &ExecInput::StdinClosed).await;
                            stdin = None;
                            if resizes.is_none() {
                                break;
                            }
                        }
                        Some(n) => {
                            if send_frame(&mut send, &ExecInput::Stdin(buf[..n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    },
                    Some((cols, rows)) = resize => {
                        let _ = send_frame(&mut send, &ExecInput::Resize { cols, rows }).await;
                    }
                }
            }
            // Keep the stream open: finishing it is not the command ending.
            std::future::pending::<()>().await
        };
        let output = async {
            loop {
                match recv_frame::<ExecOutput>(&mut recv).await? {
                    Some(ExecOutput::Stdout(b)) => {
                        stdout.write_all(&b).await?;
                        stdout.flush().await?;
                    }
                    Some(ExecOutput::Stderr(b)) => {
                        stderr.write_all(&b).await?;
                        stderr.flush().await?;
                    }
                    Some(ExecOutput::Exit(code)) => return Ok::<_, anyhow::Error>(code),
                    None => bail!("the connection ended before the command did"),
                }
            }
        };
        tokio::select! {
            _ = input => unreachable!("input never completes"),
            code = output => code,
        }
    }
}
