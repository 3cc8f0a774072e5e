//! `fleet`: the kubectl-like CLI. The only binary that prints for humans.
#![allow(clippy::print_stdout)]
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fleet::output::{self, Format};
use fleet::rollout::Progress;
use fleet::{Client, up};
use flotilla_hub::config::ClientFile;
use flotilla_proto::api::{Event, Kind, Object};
use flotilla_proto::wire::{ApplyAction, Edit, PropagationPolicy, RolloutAction};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "fleet",
    version,
    about = "Drive a Flotilla fleet: apply manifests, inspect pods and nodes, join agents"
)]
struct Cli {
    /// Credential file written by the hub (`<hub data>/admin.yaml`) or by `fleet up`.
    #[arg(long, global = true, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Override the hub address from the config file.
    #[arg(long, global = true, env = "FLEET_HUB")]
    hub: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a hub and a local agent in this process, deploy examples/hello and print its URL.
    Up {
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
        /// Where hub and agent keep their state (default: ~/.local/share/flotilla).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The examples directory (default: ./examples).
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// Do not deploy the example.
        #[arg(long)]
        no_example: bool,
        #[arg(long, default_value = "local")]
        node_name: String,
    },
    /// Create or update objects from YAML files, a directory, or stdin (-).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// List objects: fleet get pods|deployments|statefulsets|pvc|nodes|events|… [NAME];
    /// `fleet get images [NODE]` lists the images nodes hold.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Show an object in detail.
    Describe {
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Delete objects by kind and name, or those in files.
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// What happens to what the object owns: background or foreground (deleted with it;
        /// both at once here) or orphan (kept, without the owner reference).
        #[arg(
            long,
            default_value = "background",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "background",
            value_name = "background|foreground|orphan"
        )]
        cascade: String,
    },
    /// Set replicas: fleet scale deployment|replicaset|statefulset/NAME --replicas N.
    Scale {
        target: String,
        name: Option<String>,
        #[arg(long)]
        replicas: i32,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Create a ConfigMap or Secret from literals and files.
    Create {
        #[command(subcommand)]
        cmd: CreateCmd,
    },
    /// Manage a deployment's rollout: status, history, undo, pause, resume, restart.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// Change part of an object: fleet set image deployment/NAME CONTAINER=IMAGE ...
    Set {
        #[command(subcommand)]
        cmd: SetCmd,
    },
    /// Set or remove labels: fleet label nodes NAME zone=a old-  (or KIND/NAME).
    Label {
        /// KIND NAME or KIND/NAME, then KEY=VALUE or KEY- updates.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
        /// Replace a label's existing value.
        #[arg(long)]
        overwrite: bool,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Add or remove node taints: fleet taint nodes NAME key=value:NoSchedule key-.
    Taint {
        /// nodes NAME or node/NAME, then KEY[=VALUE]:EFFECT or KEY[:EFFECT]- updates.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
        /// Replace a taint with the same key and effect.
        #[arg(long)]
        overwrite: bool,
    },
    /// Mark a node unschedulable: new pods go elsewhere, running pods stay.
    Cordon { node: String },
    /// Mark a node schedulable again.
    Uncordon { node: String },
    /// Cordon a node and evict its pods, respecting PodDisruptionBudgets.
    Drain {
        node: String,
        /// Leave DaemonSet pods running (they would come back anyway).
        #[arg(long)]
        ignore_daemonsets: bool,
        /// Also evict pods that no controller manages (they are not recreated).
        #[arg(long)]
        force: bool,
        /// Give up after this long while budgets forbid evictions (0: wait forever).
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Print a container's logs: `fleet logs POD [-c C] [-p] [-f] [--tail N]`.
    Logs {
        pod: String,
        /// The container (default: the pod's `kubectl.kubernetes.io/default-container`, else
        /// its first).
        #[arg(short, long)]
        container: Option<String>,
        /// The previous run of the container (after a restart).
        #[arg(short, long)]
        previous: bool,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<i64>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Run a command in a container: `fleet exec POD [-c C] [-i] [-t] -- CMD [ARGS…]`; exits
    /// with the command's exit code.
    Exec {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Give the command a terminal (when stdin is one): raw mode here, the window size
        /// followed there.
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Store a wasm file on the hub as NAME[:TAG] for pods' `image:`.
    Push { file: PathBuf, image: String },
    /// Join tokens for agents.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print client and hub versions.
    Version,
}

/// `deployment/NAME` (or `deploy/NAME`, or TYPE NAME) and the namespace.
#[derive(clap::Args, Debug)]
struct Target {
    target: String,
    name: Option<String>,
    #[arg(short, long)]
    namespace: Option<String>,
}

impl Target {
    /// The deployment's (namespace, name); other kinds are refused.
    fn deployment(&self, verb: &str) -> anyhow::Result<(String, String)> {
        let (kind, ns, name) = self.object(verb)?;
        if kind != Kind::Deployment {
            bail!("fleet {verb} supports deployments only");
        }
        Ok((ns, name))
    }

    /// The target's (kind, namespace, name).
    fn object(&self, verb: &str) -> anyhow::Result<(Kind, String, String)> {
        let (kind, name) = match (self.target.split_once('/'), &self.name) {
            (Some((k, n)), _) => (k.to_string(), n.to_string()),
            (None, Some(n)) => (self.target.clone(), n.clone()),
            (None, None) => bail!("usage: fleet {verb} deployment/NAME"),
        };
        let ns = self.namespace.clone().unwrap_or_else(|| "default".into());
        Ok((kind_arg(&kind)?, ns, name))
    }
}

#[derive(Subcommand, Debug)]
enum RolloutCmd {
    /// Watch a deployment's or statefulset's rollout until it completes; exits non-zero if a
    /// deployment exceeds its progress deadline.
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (e.g. 2m; 0 waits forever).
        #[arg(long, default_value = "0s")]
        timeout: String,
        /// Print the current status once instead of waiting.
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// List revisions, or show one revision's pod template.
    History {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to the previous revision (or --to-revision N).
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Stop rolling out template changes (scaling still works).
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Continue rolling out after a pause.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Replace every pod, one rollout step at a time.
    Restart {
        #[command(flatten)]
        target: Target,
    },
}

/// The data of `fleet create configmap|secret`.
#[derive(clap::Args, Debug)]
struct DataArgs {
    name: String,
    /// KEY=VALUE (repeatable).
    #[arg(long = "from-literal")]
    literals: Vec<String>,
    /// [KEY=]PATH: the file's content under KEY (default: the file name) (repeatable).
    #[arg(long = "from-file")]
    files: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
}

impl DataArgs {
    fn data(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut data = std::collections::BTreeMap::new();
        for l in &self.literals {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--from-literal {l:?}: expected KEY=VALUE"))?;
            data.insert(k.to_string(), v.to_string());
        }
        for f in &self.files {
            let (key, path) = match f.split_once('=') {
                Some((k, p)) => (k.to_string(), PathBuf::from(p)),
                None => {
                    let p = PathBuf::from(f);
                    let name = p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .with_context(|| format!("--from-file {f:?}: no file name"))?
                        .to_string();
                    (name, p)
                }
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {} (text files only)", path.display()))?;
            data.insert(key, text);
        }
        Ok(data)
    }
}

#[derive(Subcommand, Debug)]
enum CreateCmd {
    /// fleet create configmap NAME --from-literal K=V --from-file [K=]PATH
    #[command(alias = "cm")]
    Configmap(DataArgs),
    /// fleet create secret generic NAME --from-literal K=V --from-file [K=]PATH
    Secret {
        #[command(subcommand)]
        cmd: SecretCmd,
    },
}

#[derive(Subcommand, Debug)]
enum SecretCmd {
    Generic(DataArgs),
}

#[derive(Subcommand, Debug)]
enum SetCmd {
    /// Set container images: fleet set image deployment/NAME CONTAINER=IMAGE [...] (`*` = all).
    Image {
        target: String,
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Print a new join token (pins this hub's CA).
    Create {
        /// Lifetime such as 30m, 24h (default 24h; 0 = never expires).
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long)]
        max_uses: Option<u32>,
    },
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn default_config() -> PathBuf {
    home().join(".config/flotilla/config.yaml")
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let path = cli.config.clone().unwrap_or_else(default_config);
    let mut file = ClientFile::read(&path).with_context(|| {
        "no hub credential: run `fleet up`, or pass --config <hub data dir>/admin.yaml".to_string()
    })?;
    if let Some(h) = &cli.hub {
        file.hub = h.clone();
    }
    Client::connect(&file).await
}

/// kubectl's `--cascade` values; `true` and `false` are its deprecated spellings.
fn cascade_flag(value: &str) -> anyhow::Result<PropagationPolicy> {
    let policy = PropagationPolicy::from_cli(value).with_context(|| {
        format!(
            "invalid cascade value ({value}). Must be \"background\", \"foreground\", or \"orphan\""
        )
    })?;
    if let Some(instead) = match value {
        "true" => Some("background"),
        "false" => Some("orphan"),
        _ => None,
    } {
        eprintln!(
            "warning: --cascade={value} is deprecated (boolean value) and can be replaced with --cascade={instead}."
        );
    }
    Ok(policy)
}

fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    Kind::from_cli(s).with_context(|| format!("the server doesn't have a resource type {s:?}"))
}

fn read_manifests(files: &[String]) -> anyhow::Result<String> {
    let mut text = String::new();
    for f in files {
        if f == "-" {
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text.push_str("\n---\n");
            continue;
        }
        let path = Path::new(f);
        let mut paths = vec![];
        if path.is_dir() {
            for e in std::fs::read_dir(path).with_context(|| format!("failed to read {f}"))? {
                let p = e?.path();
                if matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    paths.push(p);
                }
            }
            paths.sort();
        } else {
            paths.push(path.to_path_buf());
        }
        for p in paths {
            text.push_str(
                &std::fs::read_to_string(&p)
                    .with_context(|| format!("failed to read {}", p.display()))?,
            );
            text.push_str("\n---\n");
        }
    }
    Ok(text)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Up {
            listen,
            data_dir,
            examples,
            no_example,
            node_name,
        } => {
            let data_dir = data_dir
                .clone()
                .unwrap_or_else(|| home().join(".local/share/flotilla"));
            let config_path = cli.config.clone().unwrap_or_else(default_config);
            let opts = up::UpOptions {
                data_dir,
                listen: *listen,
                config_path: config_path.clone(),
                node_name: node_name.clone(),
                examples: (!no_example).then(|| examples.clone()),
            };
            let running = up::up(opts, &mut |m| eprintln!("• {m}")).await?;
            eprintln!("• fleet config written to {}", config_path.display());
            if let Some(url) = &running.url {
                println!("{url}");
                eprintln!("• try: curl {url}   |   fleet get pods -o wide   |   Ctrl-C to stop");
            }
            tokio::signal::ctrl_c().await?;
            eprintln!("• shutting down");
            running.shutdown().await;
        }
        Cmd::Apply { files } => {
            let text = read_manifests(files)?;
            let client = connect(&cli).await?;
            let (warnings, results) = client.apply_text(&text).await?;
            for w in warnings {
                eprintln!("Warning: {w}");
            }
            for r in results {
                let verb = match r.action {
                    ApplyAction::Created => "created",
                    ApplyAction::Configured => "configured",
                    ApplyAction::Unchanged => "unchanged",
                };
                println!("{}/{} {verb}", r.kind.resource(), r.name);
            }
            client.close().await;
        }
        Cmd::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let format = Format::parse(output.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
            // Not an API kind: what the nodes hold, from their status (NAME picks a node).
            if matches!(kind.as_str(), "images" | "image") {
                let client = connect(&cli).await?;
                let nodes: Vec<flotilla_proto::api::Node> = client
                    .get(Kind::Node, None, name.as_deref())
                    .await?
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::Node(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                client.close().await;
                if nodes.iter().all(|n| n.status.images.is_empty())
                    && matches!(format, Format::Table | Format::Wide)
                {
                    eprintln!("No resources found");
                } else {
                    print!("{}", output::node_images(&nodes, format));
                }
                return Ok(());
            }
            // `endpoints` is not a stored kind either: it is made from the EndpointSlices.
            let kinds: Vec<(Kind, bool)> = kind
                .split(',')
                .map(|k| match k.to_ascii_lowercase().as_str() {
                    "endpoints" | "ep" => Ok((Kind::EndpointSlice, true)),
                    _ => kind_arg(k).map(|k| (k, false)),
                })
                .collect::<anyhow::Result<_>>()?;
            let client = connect(&cli).await?;
            let ns = if *all_namespaces {
                None
            } else {
                Some(namespace.clone().unwrap_or_else(|| "default".into()))
            };
            for (i, (k, as_endpoints)) in kinds.iter().enumerate() {
                let objs = if *as_endpoints {
                    // NAME is the Service's; its slices carry it as a label.
                    client
                        .get(*k, ns.as_deref(), None)
                        .await?
                        .into_iter()
                        .filter(|o| {
                            name.as_ref().is_none_or(|n| {
                                o.meta().labels.get(flotilla_proto::api::SERVICE_NAME_LABEL)
                                    == Some(n)
                            })
                        })
                        .collect()
                } else {
                    client.get(*k, ns.as_deref(), name.as_deref()).await?
                };
                if objs.is_empty() && matches!(format, Format::Table | Format::Wide) {
                    match (&ns, k.namespaced()) {
                        (Some(ns), true) => eprintln!("No resources found in {ns} namespace."),
                        _ => eprintln!("No resources found"),
                    }
                    continue;
                }
                if i > 0 {
                    println!();
                }
                if *as_endpoints {
                    let slices: Vec<_> = objs
                        .into_iter()
                        .filter_map(|o| match o {
                            Object::EndpointSlice(s) => Some(s),
                            _ => None,
                        })
                        .collect();
                    let now = std::time::SystemTime::now();
                    print!("{}", output::endpoints(&slices, format, now));
                    continue;
                }
                print!("{}", output::render(*k, &objs, format, *all_namespaces));
            }
            client.close().await;
        }
        Cmd::Describe {
            kind,
            name,
            namespace,
        } => {
            let k = kind_arg(kind)?;
            let client = connect(&cli).await?;
            let objs = client
                .get(
                    k,
                    Some(namespace.as_deref().unwrap_or("default")),
                    Some(name),
                )
                .await?;
            for o in &objs {
                // Events of cluster-scoped objects (nodes) live in the default namespace.
                let ns = o.meta().namespace.as_deref().unwrap_or("default");
                let events: Option<Vec<Event>> = client
                    .get(Kind::Event, Some(ns), None)
                    .await
                    .ok()
                    .map(|all| {
                        all.into_iter()
                            .filter_map(|e| match e {
                                Object::Event(e) if e.involved_object.uid == o.meta().uid => {
                                    Some(e)
                                }
                                _ => None,
                            })
                            .collect()
                    });
                print!("{}", describe(o));
                // A hub too old to keep events: no section rather than a wrong `<none>`.
                if let Some(events) = events {
                    print!(
                        "{}",
                        output::events_section(&events, std::time::SystemTime::now())
                    );
                }
            }
            client.close().await;
        }
        Cmd::Delete {
            kind,
            name,
            files,
            namespace,
            cascade,
        } => {
            let propagation = cascade_flag(cascade)?;
            let client = connect(&cli).await?;
            let mut targets: Vec<(Kind, String, String)> = Vec::new();
            if !files.is_empty() {
                let parsed =
                    flotilla_proto::manifest::parse(&read_manifests(files)?).map_err(|e| {
                        anyhow::anyhow!(
                            "{}",
                            e.iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("\n")
                        )
                    })?;
                for p in parsed {
                    let key = p.object.key();
                    targets.push((key.kind, key.namespace, key.name));
                }
            } else {
                let (kind, name) = match (kind.as_deref().map(|k| k.split_once('/')), name) {
                    (Some(Some((k, n))), None) => (k.to_string(), n.to_string()),
                    (Some(None), Some(n)) => (kind.clone().unwrap_or_default(), n.clone()),
                    _ => bail!("usage: fleet delete KIND NAME | KIND/NAME | -f FILE"),
                };
                targets.push((
                    kind_arg(&kind)?,
                    namespace.clone().unwrap_or_else(|| "default".into()),
                    name,
                ));
            }
            let mut failed = false;
            for (k, ns, n) in targets {
                match client.delete_with(k, &ns, &n, propagation).await {
                    Ok(()) => println!("{}/{n} deleted", k.resource()),
                    Err(e) => {
                        eprintln!("Error from server (NotFound): {e}");
                        failed = true;
                    }
                }
            }
            client.close().await;
            if failed {
                std::process::exit(1);
            }
        }
        Cmd::Scale {
            target,
            name,
            replicas,
            namespace,
        } => {
            let (kind, name) = match (target.split_once('/'), name) {
                (Some((k, n)), _) => (k.to_string(), n.to_string()),
                (None, Some(n)) => (target.clone(), n.clone()),
                (None, None) => bail!("usage: fleet scale deployment/NAME --replicas N"),
            };
            let kind = kind_arg(&kind)?;
            if !matches!(
                kind,
                Kind::Deployment | Kind::ReplicaSet | Kind::StatefulSet
            ) {
                bail!("fleet scale supports deployments, replicasets and statefulsets");
            }
            let ns = namespace.as_deref().unwrap_or("default");
            let client = connect(&cli).await?;
            let result = if kind == Kind::Deployment {
                client
                    .scale(ns, &name, *replicas)
                    .await
                    .map(|()| format!("deployment.apps/{name} scaled"))
            } else {
                client
                    .edit(kind, ns, &name, Edit::Replicas(*replicas))
                    .await
            };
            client.close().await;
            println!("{}", result?);
        }
        Cmd::Rollout { cmd } => rollout(&cli, cmd).await?,
        Cmd::Create { cmd } => {
            let (kind, args) = match cmd {
                CreateCmd::Configmap(a) => (Kind::ConfigMap, a),
                CreateCmd::Secret {
                    cmd: SecretCmd::Generic(a),
                } => (Kind::Secret, a),
            };
            let ns = args.namespace.clone().unwrap_or_else(|| "default".into());
            let data = args.data()?;
            // Secrets take the values as stringData; the hub encodes and seals them.
            let field = if kind == Kind::Secret {
                "stringData"
            } else {
                "data"
            };
            let obj = serde_json::json!({
                "apiVersion": "v1",
                "kind": kind.as_str(),
                "metadata": {"name": args.name, "namespace": ns},
                field: data,
            });
            let parsed = flotilla_proto::manifest::parse_value(obj)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let client = connect(&cli).await?;
            let exists = client.get(kind, Some(&ns), Some(&args.name)).await.is_ok();
            let result = if exists {
                Err(anyhow::anyhow!(
                    "{}s \"{}\" already exists",
                    kind.resource(),
                    args.name
                ))
            } else {
                client.apply(&[parsed.object]).await.map(|_| ())
            };
            client.close().await;
            result?;
            println!("{}/{} created", kind.resource(), args.name);
        }
        Cmd::Set {
            cmd:
                SetCmd::Image {
                    target,
                    images,
                    namespace,
                },
        } => {
            let target = Target {
                target: target.clone(),
                name: None,
                namespace: namespace.clone(),
            };
            let (ns, name) = target.deployment("set image")?;
            let pairs = images
                .iter()
                .map(|p| match p.split_once('=') {
                    Some((c, i)) if !c.is_empty() && !i.is_empty() => {
                        Ok((c.to_string(), i.to_string()))
                    }
                    _ => Err(anyhow::anyhow!(
                        "{p:?}: expected CONTAINER=IMAGE (CONTAINER may be *)"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let client = connect(&cli).await?;
            let msg = client
                .rollout(&ns, &name, RolloutAction::SetImage { images: pairs })
                .await;
            client.close().await;
            println!("{}", msg?);
        }
        Cmd::Label {
            args,
            overwrite,
            namespace,
        } => {
            let (kind, name, updates) = object_and_updates(args)?;
            let edit = fleet::node::parse_labels(updates, *overwrite)?;
            let ns = namespace.clone().unwrap_or_else(|| "default".into());
            let client = connect(&cli).await?;
            let result = client.edit(kind, &ns, &name, edit).await;
            client.close().await;
            println!("{}", result?);
        }
        Cmd::Taint { args, overwrite } => {
            let (kind, name, updates) = object_and_updates(args)?;
            if kind != Kind::Node {
                bail!("fleet taint works on nodes: fleet taint nodes NAME KEY=VALUE:EFFECT");
            }
            let edit = fleet::node::parse_taints(updates, *overwrite)?;
            let client = connect(&cli).await?;
            let result = client.edit(Kind::Node, "", &name, edit).await;
            client.close().await;
            println!("{}", result?);
        }
        Cmd::Cordon { node } | Cmd::Uncordon { node } => {
            let cordon = matches!(cli.cmd, Cmd::Cordon { .. });
            let node = node.strip_prefix("node/").unwrap_or(node);
            let client = connect(&cli).await?;
            let result = client
                .edit(Kind::Node, "", node, Edit::Cordon(cordon))
                .await;
            client.close().await;
            println!("{}", result?);
        }
        Cmd::Drain {
            node,
            ignore_daemonsets,
            force,
            timeout,
        } => {
            let timeout = humantime::parse_duration(timeout)
                .with_context(|| format!("--timeout {timeout:?}: expected a duration like 60s"))?;
            let opts = fleet::node::DrainOptions {
                ignore_daemonsets: *ignore_daemonsets,
                force: *force,
                timeout,
                retry_every: std::time::Duration::from_secs(2),
            };
            let node = node.strip_prefix("node/").unwrap_or(node);
            let client = connect(&cli).await?;
            let result = fleet::node::drain(&client, node, &opts, &mut |m| println!("{m}")).await;
            client.close().await;
            result?;
        }
        Cmd::Logs {
            pod,
            container,
            previous,
            follow,
            tail,
            namespace,
        } => {
            let client = connect(&cli).await?;
            let mut out = tokio::io::stdout();
            let req = flotilla_proto::wire::LogsRequest {
                namespace: namespace.clone().unwrap_or_else(|| "default".into()),
                name: pod.strip_prefix("pod/").unwrap_or(pod).to_string(),
                container: container.clone(),
                tail: tail.and_then(|t| u32::try_from(t).ok()),
                follow: *follow,
                previous: *previous,
            };
            client.container_logs(req, &mut out).await?;
            client.close().await;
        }
        Cmd::Exec {
            pod,
            container,
            stdin,
            tty,
            namespace,
            command,
        } => {
            // As kubectl: a terminal is only used when stdin is one.
            let wanted = *tty;
            let tty = wanted && fleet::terminal::is_terminal();
            if wanted && !tty {
                eprintln!(
                    "Unable to use a TTY - input is not a terminal or the right kind of file"
                );
            }
            let client = connect(&cli).await?;
            let req = flotilla_proto::wire::ExecRequest {
                namespace: namespace.clone().unwrap_or_else(|| "default".into()),
                name: pod.strip_prefix("pod/").unwrap_or(pod).to_string(),
                container: container.clone(),
                command: command.clone(),
                tty,
            };
            let input = stdin.then(tokio::io::stdin);
            let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
            // A terminal: raw mode while the command runs, its size now and on every change.
            let (raw, size, resizes) = if req.tty {
                let raw = fleet::terminal::RawMode::enter()?;
                (
                    Some(raw),
                    fleet::terminal::size(),
                    Some(fleet::terminal::resizes()?),
                )
            } else {
                (None, None, None)
            };
            let code = client
                .exec(req, input, size, resizes, &mut out, &mut err)
                .await;
            drop(raw);
            client.close().await;
            std::process::exit(code?);
        }
        Cmd::Push { file, image } => {
            let bytes = std::fs::read(file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let (name, tag) = image.split_once(':').unwrap_or((image.as_str(), "latest"));
            let client = connect(&cli).await?;
            let digest = client.push(&bytes, name, tag).await?;
            println!("{name}:{tag} {digest}");
            client.close().await;
        }
        Cmd::Token {
            cmd: TokenCmd::Create { ttl, max_uses },
        } => {
            let ttl = humantime::parse_duration(ttl)
                .with_context(|| format!("--ttl {ttl:?}: expected a duration like 30m or 24h"))?;
            let client = connect(&cli).await?;
            let token = client
                .create_token((!ttl.is_zero()).then_some(ttl.as_secs()), *max_uses)
                .await?;
            println!("{token}");
            client.close().await;
        }
        Cmd::Version => {
            println!("fleet {}", flotilla_proto::VERSION);
            if let Ok(client) = connect(&cli).await {
                println!(
                    "hub: reachable, protocol {}",
                    flotilla_proto::wire::PROTOCOL_VERSION
                );
                client.close().await;
            }
        }
    }
    Ok(())
}

/// `KIND NAME updates…` or `KIND/NAME updates…`.
fn object_and_updates(args: &[String]) -> anyhow::Result<(Kind, String, &[String])> {
    let (kind, name, rest) = match args[0].split_once('/') {
        Some((k, n)) => (k.to_string(), n.to_string(), &args[1..]),
        None if args.len() >= 3 => (args[0].clone(), args[1].clone(), &args[2..]),
        None => bail!("expected KIND NAME followed by at least one update"),
    };
    Ok((kind_arg(&kind)?, name, rest))
}

async fn rollout(cli: &Cli, cmd: &RolloutCmd) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let result = rollout_with(&client, cmd).await;
    client.close().await;
    result
}

async fn rollout_with(client: &Client, cmd: &RolloutCmd) -> anyhow::Result<()> {
    let change = |target: &Target, verb: &str, action: RolloutAction| {
        target
            .deployment(&format!("rollout {verb}"))
            .map(|(ns, name)| (ns, name, action))
    };
    let (ns, name, action) = match cmd {
        RolloutCmd::Status {
            target,
            timeout,
            watch,
        } => {
            let (kind, ns, name) = target.object("rollout status")?;
            if !matches!(kind, Kind::Deployment | Kind::StatefulSet) {
                bail!("fleet rollout status supports deployments and statefulsets");
            }
            let timeout = humantime::parse_duration(timeout)
                .with_context(|| format!("--timeout {timeout:?}: expected a duration like 2m"))?;
            let started = std::time::Instant::now();
            let mut last = String::new();
            loop {
                let progress = if kind == Kind::StatefulSet {
                    fleet::rollout::statefulset_status(&client.statefulset(&ns, &name).await?)
                } else {
                    fleet::rollout::status(&client.deployment_with_history(&ns, &name).await?.0)
                };
                match progress {
                    Progress::Done(m) => {
                        println!("{m}");
                        return Ok(());
                    }
                    Progress::Failed(m) => bail!("{m}"),
                    Progress::Waiting(m) => {
                        if m != last {
                            println!("{m}");
                            last = m;
                        }
                    }
                }
                if !watch {
                    return Ok(());
                }
                if !timeout.is_zero() && started.elapsed() >= timeout {
                    bail!("timed out waiting for the condition");
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        RolloutCmd::History { target, revision } => {
            let (ns, name) = target.deployment("rollout history")?;
            let (d, rss) = client.deployment_with_history(&ns, &name).await?;
            let text =
                fleet::rollout::history(&d, &rss, *revision).map_err(|e| anyhow::anyhow!(e))?;
            print!("{text}");
            return Ok(());
        }
        RolloutCmd::Undo {
            target,
            to_revision,
        } => change(
            target,
            "undo",
            RolloutAction::Undo {
                to_revision: *to_revision,
            },
        )?,
        RolloutCmd::Pause { target } => change(target, "pause", RolloutAction::Pause)?,
        RolloutCmd::Resume { target } => change(target, "resume", RolloutAction::Resume)?,
        RolloutCmd::Restart { target } => change(target, "restart", RolloutAction::Restart)?,
    };
    println!("{}", client.rollout(&ns, &name, action).await?);
    Ok(())
}

/// A readable, kubectl-describe-like view: the object as YAML, with conditions summarised.
fn describe(o: &Object) -> String {
    let m = o.meta();
    let mut out = format!("Name:         {}\n", m.name);
    if let Some(ns) = &m.namespace {
        out.push_str(&format!("Namespace:    {ns}\n"));
    }
    out.push_str(&format!(
        "Kind:         {}\nUID:          {}\nCreated:      {} ({} ago)\n",
        o.kind(),
        m.uid,
        m.creation_timestamp,
        output::age(&m.creation_timestamp)
    ));
    if !m.labels.is_empty() {
        out.push_str(&format!(
            "Labels:       {}\n",
            m.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Object::Pod(p) = o {
        out.push_str(&format!(
            "Node:         {}\nStatus:       {}\nEndpoint:     {}\n",
            p.spec.node_name.as_deref().unwrap_or("<none>"),
            output::pod_status(p),
            p.status.endpoint.as_deref().unwrap_or("<none>")
        ));
        for c in &p.status.conditions {
            out.push_str(&format!(
                "Condition:    {}={} {}\n",
                c.type_,
                c.status,
                c.message.as_deref().unwrap_or("")
            ));
        }
    }
    if let Object::Node(n) = o {
        out.push_str(&output::describe_node(n));
    }
    let mut v = o.to_json();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("apiVersion");
        map.remove("kind");
    }
    out.push_str("---\n");
    out.push_str(&serde_yaml_ng::to_string(&v).unwrap_or_default());
    out
}
