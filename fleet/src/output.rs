//! kubectl-style output: tables with the usual columns, AGE like kubectl, and YAML/JSON.
use flotilla_proto::api::{
    EndpointSlice, Event, Kind, LabelSelector, Node, Object, Pod, PodTemplateSpec,
    SERVICE_NAME_LABEL, Service,
};
use std::time::{Duration, SystemTime};

/// kubectl's HumanDuration: 45s, 3m12s, 17m, 5h3m, 20h, 3d4h, 12d.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s.is_multiple_of(60) {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m.is_multiple_of(60) {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if days < 8 {
        if h.is_multiple_of(24) {
            format!("{days}d")
        } else {
            format!("{days}d{}h", h % 24)
        }
    } else {
        format!("{days}d")
    }
}

pub fn age(timestamp: &str) -> String {
    age_at(SystemTime::now(), timestamp)
}

/// [`age`] as seen at `now` (a clock in the past or future of the hub's shows `0s`).
pub fn age_at(now: SystemTime, timestamp: &str) -> String {
    humantime::parse_rfc3339(timestamp)
        .ok()
        .map(|t| human_duration(now.duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into())
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.len() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// The STATUS column of `get pods`: a waiting/terminated reason wins over the phase.
pub fn pod_status(p: &Pod) -> String {
    pod_columns(p).0
}

/// The STATUS and RESTARTS columns of `get pods`, worked out as kubectl's printer does. The
/// first init container not done (or sidecar not running past its startup probe) tells, and
/// its restarts and those before it count, while the pod initializes; after that (and once
/// the Initialized condition holds, so a sidecar waiting to restart still shows) the
/// containers' reasons win, and the sidecars' and containers' restarts count.
fn pod_columns(p: &Pod) -> (String, i32) {
    let unscheduled = p.spec.node_name.is_none()
        && (p.status.conditions.iter()).any(|c| c.type_ == "PodScheduled" && c.status == "False");
    let mut reason = match p.status.phase.as_str() {
        "" => "Pending".to_string(),
        _ if unscheduled => "Pending".to_string(),
        phase => phase.to_string(),
    };
    let inits = p.spec.init_containers.len();
    let (mut restarts, mut sidecar_restarts) = (0, 0);
    let mut initializing = false;
    for (i, c) in p.status.init_container_statuses.iter().enumerate() {
        restarts += c.restart_count;
        let sidecar = (p.spec.init_containers.iter()).any(|s| s.name == c.name && s.is_sidecar());
        if sidecar {
            sidecar_restarts += c.restart_count;
        }
        reason = match &c.state.terminated {
            Some(t) if t.exit_code == 0 => continue,
            _ if sidecar && c.started == Some(true) => continue,
            Some(t) => match &t.reason {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", t.exit_code),
            },
            None => match c.state.waiting.as_ref().and_then(|w| w.reason.as_deref()) {
                Some(r) if !r.is_empty() && r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{i}/{inits}"),
            },
        };
        initializing = true;
        break;
    }
    let initialized = flotilla_proto::api::condition(&p.status.conditions, "Initialized")
        .is_some_and(|c| c.status == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut running = false;
        // The first container with a reason gives it.
        for c in p.status.container_statuses.iter().rev() {
            restarts += c.restart_count;
            let waiting = c.state.waiting.as_ref().and_then(|w| w.reason.clone());
            if let Some(r) = waiting.filter(|r| !r.is_empty()) {
                reason = r;
            } else if let Some(t) = &c.state.terminated {
                reason = match &t.reason {
                    Some(r) if !r.is_empty() => r.clone(),
                    _ => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && c.state.running.is_some() {
                running = true;
            }
        }
        if reason == "Completed" && running {
            reason = match p.is_ready() {
                true => "Running".into(),
                false => "NotReady".into(),
            };
        }
    }
    // A pod of a silent node: what its containers last did is not known any more.
    if p.status.phase == "Unknown" {
        reason = "Unknown".into();
    }
    (reason, restarts)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Format, String> {
        Ok(match s {
            None => Format::Table,
            Some("wide") => Format::Wide,
            Some("yaml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("name") => Format::Name,
            Some(o) => {
                return Err(format!(
                    "unable to match a printer suitable for the output format {o:?}, allowed formats are: json, name, wide, yaml"
                ));
            }
        })
    }
}

/// Renders objects of one kind.
pub fn render(kind: Kind, objects: &[Object], format: Format, all_namespaces: bool) -> String {
    render_at(kind, objects, format, all_namespaces, SystemTime::now())
}

/// [`render`] with ages as seen at `now`.
pub fn render_at(
    kind: Kind,
    objects: &[Object],
    format: Format,
    all_namespaces: bool,
    now: SystemTime,
) -> String {
    // Events read as a timeline: oldest first, by when they last happened.
    let sorted;
    let objects = if kind == Kind::Event {
        let mut v = objects.to_vec();
        v.sort_by_cached_key(|o| match o {
            Object::Event(e) => event_order(e),
            _ => Default::default(),
        });
        sorted = v;
        &sorted[..]
    } else {
        objects
    };
    match format {
        Format::Yaml => {
            if objects.len() == 1 {
                return serde_yaml_ng::to_string(&objects[0].to_json()).unwrap_or_default();
            }
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects.iter().map(|o| o.to_json()).collect::<Vec<_>>()});
            return serde_yaml_ng::to_string(&list).unwrap_or_default();
        }
        Format::Json => {
            if objects.len() == 1 {
                return serde_json::to_string_pretty(&objects[0].to_json()).unwrap_or_default()
                    + "\n";
            }
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects.iter().map(|o| o.to_json()).collect::<Vec<_>>()});
            return serde_json::to_string_pretty(&list).unwrap_or_default() + "\n";
        }
        Format::Name => {
            return objects
                .iter()
                .map(|o| format!("{}/{}\n", kind.resource(), o.meta().name))
                .collect();
        }
        Format::Table | Format::Wide => {}
    }
    let wide = format == Format::Wide;
    let (mut header, mut rows): (Vec<&str>, Vec<Vec<String>>) = match kind {
        Kind::Pod => {
            let mut h = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            if wide {
                h.extend(["IP", "NODE", "ENDPOINT"]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| {
                    if let Object::Pod(p) = o {
                        Some(p)
                    } else {
                        None
                    }
                })
                .map(|p| {
                    // Sidecars count with the containers, as kubectl counts them.
                    let sidecars = p.spec.init_containers.iter().filter(|c| c.is_sidecar());
                    let side_names: Vec<&str> = sidecars.map(|c| c.name.as_str()).collect();
                    let ready = (p.status.init_container_statuses.iter())
                        .filter(|c| side_names.contains(&c.name.as_str()))
                        .chain(&p.status.container_statuses)
                        .filter(|c| c.ready)
                        .count();
                    let all = p.spec.containers.len() + side_names.len();
                    let mut r = vec![
                        p.metadata.name.clone(),
                        format!("{ready}/{all}"),
                        pod_status(p),
                        pod_columns(p).1.to_string(),
                        age_at(now, &p.metadata.creation_timestamp),
                    ];
                    if wide {
                        r.push(p.status.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
                        r.push(p.spec.node_name.clone().unwrap_or_else(|| "<none>".into()));
                        r.push(p.status.endpoint.clone().unwrap_or_else(|| "<none>".into()));
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::Deployment => {
            let mut h = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
            if wide {
                h.extend(["IMAGES", "SELECTOR"]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| {
                    if let Object::Deployment(d) = o {
                        Some(d)
                    } else {
                        None
                    }
                })
                .map(|d| {
                    let mut r = vec![
                        d.metadata.name.clone(),
                        format!(
                            "{}/{}",
                            d.status.ready_replicas,
                            d.spec.replicas.unwrap_or(1)
                        ),
                        d.status.updated_replicas.to_string(),
                        d.status.available_replicas.to_string(),
                        age_at(now, &d.metadata.creation_timestamp),
                    ];
                    if wide {
                        r.push(images(&d.spec.template));
                        r.push(d.spec.selector.to_selector_string());
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::ReplicaSet => {
            let mut h = vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"];
            if wide {
                h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| {
                    if let Object::ReplicaSet(rs) = o {
                        Some(rs)
                    } else {
                        None
                    }
                })
                .map(|rs| {
                    let mut r = vec![
                        rs.metadata.name.clone(),
                        rs.replicas().to_string(),
                        rs.status.replicas.to_string(),
                        rs.status.ready_replicas.to_string(),
                        age_at(now, &rs.metadata.creation_timestamp),
                    ];
                    if wide {
                        let t = &rs.spec.template.spec;
                        r.push(
                            t.containers
                                .iter()
                                .map(|c| c.name.clone())
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                        r.push(images(&rs.spec.template));
                        r.push(rs.spec.selector.to_selector_string());
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::StatefulSet => {
            let mut h = vec!["NAME", "READY", "AGE"];
            if wide {
                h.extend(["CONTAINERS", "IMAGES"]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| match o {
                    Object::StatefulSet(s) => Some(s),
                    _ => None,
                })
                .map(|s| {
                    let mut r = vec![
                        s.metadata.name.clone(),
                        format!("{}/{}", s.status.ready_replicas, s.replicas()),
                        age_at(now, &s.metadata.creation_timestamp),
                    ];
                    if wide {
                        r.push(
                            s.spec
                                .template
                                .spec
                                .containers
                                .iter()
                                .map(|c| c.name.clone())
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                        r.push(images(&s.spec.template));
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::PersistentVolumeClaim => {
            let mut h = vec![
                "NAME",
                "STATUS",
                "VOLUME",
                "CAPACITY",
                "ACCESS MODES",
                "STORAGECLASS",
                "AGE",
            ];
            if wide {
                h.push("VOLUMEMODE");
            }
            let rows = objects
                .iter()
                .filter_map(|o| match o {
                    Object::PersistentVolumeClaim(c) => Some(c),
                    _ => None,
                })
                .map(|c| {
                    let mut r = vec![
                        c.metadata.name.clone(),
                        if c.status.phase.is_empty() {
                            "Pending".into()
                        } else {
                            c.status.phase.clone()
                        },
                        c.spec.volume_name.clone().unwrap_or_default(),
                        c.status
                            .capacity
                            .get("storage")
                            .map(|q| q.0.clone())
                            .unwrap_or_default(),
                        access_modes(&c.status.access_modes),
                        c.spec
                            .storage_class_name
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "<unset>".into()),
                        age_at(now, &c.metadata.creation_timestamp),
                    ];
                    if wide {
                        r.push(
                            c.spec
                                .volume_mode
                                .clone()
                                .unwrap_or_else(|| "Filesystem".into()),
                        );
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::ControllerRevision => (
            vec!["NAME", "CONTROLLER", "REVISION", "AGE"],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::ControllerRevision(r) => Some(r),
                    _ => None,
                })
                .map(|r| {
                    let controller = r
                        .metadata
                        .owner_references
                        .iter()
                        .find(|o| o.controller == Some(true))
                        .and_then(|o| {
                            Kind::from_kind(&o.kind).map(|k| format!("{}/{}", k.resource(), o.name))
                        })
                        .unwrap_or_else(|| "<none>".into());
                    vec![
                        r.metadata.name.clone(),
                        controller,
                        r.revision.to_string(),
                        age_at(now, &r.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::DaemonSet => (
            vec![
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE",
            ],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::DaemonSet(d) => Some(d),
                    _ => None,
                })
                .map(|d| {
                    let s = &d.status;
                    let sel = &d.spec.template.spec.node_selector;
                    vec![
                        d.metadata.name.clone(),
                        s.desired_number_scheduled.to_string(),
                        s.current_number_scheduled.to_string(),
                        s.number_ready.to_string(),
                        s.updated_number_scheduled.to_string(),
                        s.number_available.to_string(),
                        if sel.is_empty() {
                            "<none>".into()
                        } else {
                            LabelSelector {
                                match_labels: sel.clone(),
                                ..Default::default()
                            }
                            .to_selector_string()
                        },
                        age_at(now, &d.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Job => (
            vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::Job(j) => Some(j),
                    _ => None,
                })
                .map(|j| {
                    let status = match j.finished() {
                        Some(c) => c.type_.clone(),
                        None if j.spec.suspend == Some(true) => "Suspended".into(),
                        None => "Running".into(),
                    };
                    let t = |s: &Option<String>| {
                        s.as_deref().and_then(|s| humantime::parse_rfc3339(s).ok())
                    };
                    let duration = match (t(&j.status.start_time), t(&j.status.completion_time)) {
                        (Some(a), Some(b)) => {
                            human_duration(b.duration_since(a).unwrap_or_default())
                        }
                        (Some(a), None) => human_duration(a.elapsed().unwrap_or_default()),
                        _ => String::new(),
                    };
                    vec![
                        j.metadata.name.clone(),
                        status,
                        format!("{}/{}", j.status.succeeded, j.completions()),
                        duration,
                        age_at(now, &j.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::CronJob => (
            vec![
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::CronJob(c) => Some(c),
                    _ => None,
                })
                .map(|c| {
                    vec![
                        c.metadata.name.clone(),
                        c.spec.schedule.clone(),
                        c.spec.time_zone.clone().unwrap_or_else(|| "<none>".into()),
                        (c.spec.suspend == Some(true)).to_string(),
                        c.status.active.len().to_string(),
                        c.status
                            .last_schedule_time
                            .as_deref()
                            .map_or_else(|| "<none>".into(), |t| age_at(now, t)),
                        age_at(now, &c.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Node => {
            let mut h = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
            if wide {
                h.extend([
                    "INTERNAL-IP",
                    "OS-IMAGE",
                    "KERNEL-VERSION",
                    "ARCH",
                    "CONTAINER-RUNTIME",
                    "POD-CIDR",
                ]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| {
                    if let Object::Node(n) = o {
                        Some(n)
                    } else {
                        None
                    }
                })
                .map(|n| {
                    let mut status = if n.is_ready() {
                        "Ready".to_string()
                    } else {
                        "NotReady".to_string()
                    };
                    if n.spec.unschedulable {
                        status.push_str(",SchedulingDisabled");
                    }
                    let mut r = vec![
                        n.metadata.name.clone(),
                        status,
                        "<none>".into(),
                        age_at(now, &n.metadata.creation_timestamp),
                        n.status.node_info.kubelet_version.clone(),
                    ];
                    if wide {
                        r.push(n.internal_ip().unwrap_or("<none>").to_string());
                        r.push(n.status.node_info.operating_system.clone());
                        r.push(n.status.node_info.kernel_version.clone());
                        r.push(n.status.node_info.architecture.clone());
                        r.push(
                            Some(n.status.node_info.container_runtime_version.as_str())
                                .filter(|v| !v.is_empty())
                                .unwrap_or("<none>")
                                .to_string(),
                        );
                        r.push(n.spec.pod_cidr.clone().unwrap_or_else(|| "<none>".into()));
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::PodDisruptionBudget => (
            vec![
                "NAME",
                "MIN AVAILABLE",
                "MAX UNAVAILABLE",
                "ALLOWED DISRUPTIONS",
                "AGE",
            ],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::PodDisruptionBudget(b) => Some(b),
                    _ => None,
                })
                .map(|b| {
                    let shown = |v: &Option<flotilla_proto::api::IntOrString>| {
                        v.as_ref().map_or_else(|| "N/A".into(), |v| v.to_string())
                    };
                    vec![
                        b.metadata.name.clone(),
                        shown(&b.spec.min_available),
                        shown(&b.spec.max_unavailable),
                        b.status.disruptions_allowed.to_string(),
                        age_at(now, &b.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Event => {
            let mut h = vec!["LAST SEEN", "TYPE", "REASON", "OBJECT"];
            if wide {
                h.push("SOURCE");
            }
            h.push("MESSAGE");
            if wide {
                h.extend(["FIRST SEEN", "COUNT", "NAME"]);
            }
            let rows = objects
                .iter()
                .filter_map(|o| match o {
                    Object::Event(e) => Some(e),
                    _ => None,
                })
                .map(|e| {
                    let mut r = vec![
                        age_at(now, &e.last_timestamp),
                        e.type_.to_string(),
                        e.reason.clone(),
                        event_object(e),
                    ];
                    if wide {
                        r.push(event_source(e));
                    }
                    r.push(e.message.trim().to_string());
                    if wide {
                        r.push(age_at(now, &e.first_timestamp));
                        r.push(e.count.to_string());
                        r.push(e.metadata.name.clone());
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::Service => {
            let mut h = vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ];
            if wide {
                h.push("SELECTOR");
            }
            let rows = objects
                .iter()
                .filter_map(|o| match o {
                    Object::Service(s) => Some(s),
                    _ => None,
                })
                .map(|s| {
                    let mut r = vec![
                        s.metadata.name.clone(),
                        s.spec.type_str().to_string(),
                        s.spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
                        service_external(s),
                        service_ports(s),
                        age_at(now, &s.metadata.creation_timestamp),
                    ];
                    if wide {
                        r.push(if s.spec.selector.is_empty() {
                            "<none>".into()
                        } else {
                            selector_string(&s.spec.selector)
                        });
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::EndpointSlice => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::EndpointSlice(s) => Some(s),
                    _ => None,
                })
                .map(|s| {
                    let ports: Vec<String> = s
                        .ports
                        .iter()
                        .filter_map(|p| p.port.map(|p| p.to_string()))
                        .collect();
                    let addrs: Vec<String> = s
                        .endpoints
                        .iter()
                        .flat_map(|e| e.addresses.iter().cloned())
                        .collect();
                    vec![
                        s.metadata.name.clone(),
                        s.address_type.clone(),
                        if ports.is_empty() {
                            "<unset>".into()
                        } else {
                            ports.join(",")
                        },
                        first_few(&addrs, "<unset>"),
                        age_at(now, &s.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Ingress => (
            vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::Ingress(i) => Some(i),
                    _ => None,
                })
                .map(|i| {
                    let hosts: Vec<String> = i
                        .spec
                        .rules
                        .iter()
                        .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
                        .collect();
                    let addrs: Vec<String> = i
                        .status
                        .load_balancer
                        .ingress
                        .iter()
                        .filter_map(|a| a.ip.clone().or_else(|| a.hostname.clone()))
                        .collect();
                    vec![
                        i.metadata.name.clone(),
                        i.spec
                            .ingress_class_name
                            .clone()
                            .unwrap_or_else(|| "<none>".into()),
                        first_few(&hosts, "*"),
                        addrs.join(","),
                        if i.spec.tls.is_empty() {
                            "80"
                        } else {
                            "80, 443"
                        }
                        .into(),
                        age_at(now, &i.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::IngressClass => (
            vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::IngressClass(c) => Some(c),
                    _ => None,
                })
                .map(|c| {
                    vec![
                        c.metadata.name.clone(),
                        c.spec.controller.clone(),
                        "<none>".into(),
                        age_at(now, &c.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Middleware => (
            vec!["NAME", "AGE"],
            objects
                .iter()
                .map(|o| {
                    vec![
                        o.meta().name.clone(),
                        age_at(now, &o.meta().creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Namespace => (
            vec!["NAME", "STATUS", "AGE"],
            objects
                .iter()
                .map(|o| {
                    vec![
                        o.meta().name.clone(),
                        "Active".into(),
                        age_at(now, &o.meta().creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::ConfigMap => (
            vec!["NAME", "DATA", "AGE"],
            objects
                .iter()
                .filter_map(|o| {
                    if let Object::ConfigMap(c) = o {
                        Some(c)
                    } else {
                        None
                    }
                })
                .map(|c| {
                    vec![
                        c.metadata.name.clone(),
                        (c.data.len() + c.binary_data.len()).to_string(),
                        age_at(now, &c.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
        Kind::Secret => (
            vec!["NAME", "TYPE", "DATA", "AGE"],
            objects
                .iter()
                .filter_map(|o| {
                    if let Object::Secret(s) = o {
                        Some(s)
                    } else {
                        None
                    }
                })
                .map(|s| {
                    vec![
                        s.metadata.name.clone(),
                        s.type_.clone().unwrap_or_else(|| "Opaque".into()),
                        s.data.len().to_string(),
                        age_at(now, &s.metadata.creation_timestamp),
                    ]
                })
                .collect(),
        ),
    };
    if all_namespaces && kind.namespaced() {
        header.insert(0, "NAMESPACE");
        for (r, o) in rows.iter_mut().zip(objects) {
            r.insert(0, o.meta().namespace.clone().unwrap_or_default());
        }
    }
    table(&header, &rows)
}

/// kubectl's way of listing many things in a cell: the first three, then `+ N more...`.
fn first_few(items: &[String], none: &str) -> String {
    match items.len() {
        0 => none.to_string(),
        1..=3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn selector_string(selector: &std::collections::BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Service's EXTERNAL-IP column.
fn service_external(s: &Service) -> String {
    match s.spec.type_str() {
        "ExternalName" => s.spec.external_name.clone().unwrap_or_default(),
        "LoadBalancer" => {
            let ips: Vec<String> = s
                .status
                .load_balancer
                .ingress
                .iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect();
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => "<none>".into(),
    }
}

/// A Service's PORT(S) column: `80/TCP`, or `80:30080/TCP` with a node port.
fn service_ports(s: &Service) -> String {
    if s.spec.ports.is_empty() {
        return "<none>".into();
    }
    s.spec
        .ports
        .iter()
        .map(|p| match p.node_port {
            Some(np) => format!("{}:{np}/{}", p.port, p.protocol_str()),
            None => format!("{}/{}", p.port, p.protocol_str()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `fleet get endpoints`: the Endpoints view kubectl shows, made from each Service's
/// EndpointSlices (Flotilla stores no Endpoints objects): ready `address:port` pairs.
pub fn endpoints(slices: &[EndpointSlice], format: Format, now: SystemTime) -> String {
    let mut by_service: std::collections::BTreeMap<(String, String), Vec<&EndpointSlice>> =
        Default::default();
    for s in slices {
        if let Some(svc) = s.metadata.labels.get(SERVICE_NAME_LABEL) {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            by_service.entry((ns, svc.clone())).or_default().push(s);
        }
    }
    let subsets = |slices: &[&EndpointSlice]| -> Vec<serde_json::Value> {
        slices
            .iter()
            .filter(|s| !s.endpoints.is_empty())
            .map(|s| {
                let addr = |ready: bool| -> Vec<serde_json::Value> {
                    s.endpoints
                        .iter()
                        .filter(|e| e.is_ready() == ready)
                        .flat_map(|e| {
                            e.addresses.iter().map(move |a| {
                                let mut v = serde_json::json!({"ip": a});
                                if let Some(n) = &e.node_name {
                                    v["nodeName"] = n.clone().into();
                                }
                                if let Some(h) = &e.hostname {
                                    v["hostname"] = h.clone().into();
                                }
                                if let Some(t) = &e.target_ref {
                                    v["targetRef"] = serde_json::json!({"kind": t.kind, "namespace": t.namespace, "name": t.name, "uid": t.uid});
                                }
                                v
                            })
                        })
                        .collect()
                };
                let mut subset = serde_json::json!({"addresses": addr(true), "ports": s.ports});
                let unready = addr(false);
                if !unready.is_empty() {
                    subset["notReadyAddresses"] = unready.into();
                }
                subset
            })
            .collect()
    };
    match format {
        Format::Yaml | Format::Json => {
            let items: Vec<serde_json::Value> = by_service
                .iter()
                .map(|((ns, name), slices)| {
                    serde_json::json!({"apiVersion": "v1", "kind": "Endpoints",
                        "metadata": {"name": name, "namespace": ns}, "subsets": subsets(slices)})
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            return if format == Format::Yaml {
                serde_yaml_ng::to_string(&list).unwrap_or_default()
            } else {
                serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
            };
        }
        Format::Name => {
            return by_service
                .keys()
                .map(|(_, name)| format!("endpoints/{name}\n"))
                .collect();
        }
        Format::Table | Format::Wide => {}
    }
    let rows: Vec<Vec<String>> = by_service
        .iter()
        .map(|((_, name), slices)| {
            let pairs: Vec<String> = slices
                .iter()
                .flat_map(|s| {
                    let ports: Vec<i32> = s.ports.iter().filter_map(|p| p.port).collect();
                    s.endpoints
                        .iter()
                        .filter(|e| e.is_ready())
                        .flat_map(|e| e.addresses.iter())
                        .flat_map(move |a| {
                            let a = a.clone();
                            if ports.is_empty() {
                                vec![a]
                            } else {
                                ports.iter().map(|p| format!("{a}:{p}")).collect()
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let created = slices
                .iter()
                .map(|s| &s.metadata.creation_timestamp)
                .min()
                .cloned()
                .unwrap_or_default();
            vec![
                name.clone(),
                first_few(&pairs, "<none>"),
                age_at(now, &created),
            ]
        })
        .collect();
    table(&["NAME", "ENDPOINTS", "AGE"], &rows)
}

/// An event's OBJECT column: `pod/web-abc`, as kubectl prints it.
fn event_object(e: &Event) -> String {
    let kind = e.involved_object.kind.to_ascii_lowercase();
    if e.involved_object.name.is_empty() {
        kind
    } else {
        format!("{kind}/{}", e.involved_object.name)
    }
}

/// An event's SOURCE column: `component, host` (or just the component).
fn event_source(e: &Event) -> String {
    match (e.source.component.as_str(), e.source.host.as_str()) {
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    }
}

/// The `Events:` section that ends `fleet describe`, as kubectl writes it: oldest first,
/// AGE `3s (x4 over 12s)` for a repeated event, `<none>` when there are none.
/// Timeline order: when an event last happened (to the second), then the order the hub
/// stored it in (its resourceVersion), which keeps same-second events in sequence.
fn event_order(e: &Event) -> (Option<SystemTime>, u64, String) {
    (
        humantime::parse_rfc3339(&e.last_timestamp).ok(),
        e.metadata.resource_version.parse().unwrap_or(0),
        e.metadata.name.clone(),
    )
}

pub fn events_section(events: &[Event], now: SystemTime) -> String {
    if events.is_empty() {
        return "Events:       <none>\n".into();
    }
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_cached_key(|e| event_order(e));
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let first = age_at(now, &e.first_timestamp);
            let age = if e.count > 1 {
                format!(
                    "{} (x{} over {first})",
                    age_at(now, &e.last_timestamp),
                    e.count
                )
            } else {
                first
            };
            vec![
                e.type_.to_string(),
                e.reason.clone(),
                age,
                e.source.component.clone(),
                e.message.trim().to_string(),
            ]
        })
        .collect();
    let header = ["Type", "Reason", "Age", "From", "Message"];
    // kubectl's rule line, four dashes under Age included.
    let rule: Vec<String> = ["----", "------", "----", "----", "-------"]
        .iter()
        .map(|r| r.to_string())
        .collect();
    let mut all = vec![rule];
    all.extend(rows);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::from("Events:\n");
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(all.iter()) {
        out.push_str("  ");
        let n = r.len();
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.len() + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// Bytes as `crictl images` shows them, in binary units: `812B`, `1.9MiB`, `2.0GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// `fleet get images`: one row per node and image name (tags first; an image known only by
/// digest shows its `repository@digest`), from the nodes' status. Wide adds the digest.
/// YAML/JSON give `{node, names, sizeBytes}` items.
pub fn node_images(nodes: &[Node], format: Format) -> String {
    match format {
        Format::Yaml | Format::Json => {
            let items: Vec<serde_json::Value> = nodes
                .iter()
                .flat_map(|n| {
                    n.status.images.iter().map(|i| {
                        serde_json::json!({"node": n.metadata.name, "names": i.names, "sizeBytes": i.size_bytes})
                    })
                })
                .collect();
            let list = serde_json::json!({"kind": "List", "items": items});
            return if format == Format::Yaml {
                serde_yaml_ng::to_string(&list).unwrap_or_default()
            } else {
                serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
            };
        }
        Format::Name => {
            return nodes
                .iter()
                .flat_map(|n| n.status.images.iter())
                .filter_map(|i| i.names.first())
                .map(|name| format!("image/{name}\n"))
                .collect();
        }
        Format::Table | Format::Wide => {}
    }
    let wide = format == Format::Wide;
    let mut rows = Vec::new();
    for n in nodes {
        for i in &n.status.images {
            let digest = i
                .names
                .iter()
                .find_map(|name| name.split_once('@').map(|(_, d)| d.to_string()))
                .unwrap_or_else(|| "<none>".into());
            let tags: Vec<&String> = i.names.iter().filter(|name| !name.contains('@')).collect();
            let shown: Vec<&String> = if tags.is_empty() {
                i.names.iter().take(1).collect()
            } else {
                tags
            };
            for name in shown {
                let mut r = vec![
                    n.metadata.name.clone(),
                    name.clone(),
                    human_size(i.size_bytes),
                ];
                if wide {
                    r.push(digest.clone());
                }
                rows.push(r);
            }
        }
    }
    rows.sort();
    let mut header = vec!["NODE", "IMAGE", "SIZE"];
    if wide {
        header.push("DIGEST");
    }
    table(&header, &rows)
}

/// The node part of `fleet describe node`: runtime, conditions and images, as kubectl
/// shows them.
pub fn describe_node(n: &Node) -> String {
    let info = &n.status.node_info;
    let runtime = Some(info.container_runtime_version.as_str())
        .filter(|v| !v.is_empty())
        .unwrap_or("<none>");
    let mut out = format!(
        "Agent:        {}\nRuntime:      {runtime}\nConditions:\n",
        info.kubelet_version
    );
    let rows: Vec<Vec<String>> = n
        .status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    for line in table(&["Type", "Status", "Reason", "Message"], &rows).lines() {
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if n.status.images.is_empty() {
        out.push_str("Images:       <none>\n");
        return out;
    }
    out.push_str(&format!("Images:       {}\n", n.status.images.len()));
    for i in &n.status.images {
        out.push_str(&format!(
            "  {}  {}\n",
            human_size(i.size_bytes),
            i.names.join(", ")
        ));
    }
    out
}

/// kubectl's ACCESS MODES column: RWO, ROX, RWX, RWOP, comma-separated.
pub fn access_modes(modes: &[String]) -> String {
    modes
        .iter()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn images(t: &PodTemplateSpec) -> String {
    t.spec
        .containers
        .iter()
        .map(|c| c.image.clone())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with_images() -> Node {
        let d = format!("sha256:{}", "a".repeat(64));
        let e = format!("sha256:{}", "b".repeat(64));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-0"},
            "status": {
                "nodeInfo": {"kubeletVersion": "flotilla-agent/0.1.0", "containerRuntimeVersion": "runc://1.1.5"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "AgentReady", "message": "agent is posting ready status"},
                    {"type": "ContainerRuntimeVulnerable", "status": "True", "reason": "KnownVulnerabilities", "message": "runc 1.1.5 is older than …"}
                ],
                "images": [
                    {"names": ["127.0.0.1:5000/test/a:v1", format!("127.0.0.1:5000/test/a@{d}")], "sizeBytes": 2_000_000},
                    {"names": [format!("127.0.0.1:5000/test/b@{e}")], "sizeBytes": 812},
                    {"names": ["hello:v1"], "sizeBytes": 270_336}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn images_per_node() {
        let n = node_with_images();
        expect_test::expect![[r#"
            NODE     IMAGE                                                                                           SIZE
            node-0   127.0.0.1:5000/test/a:v1                                                                        1.9MiB
            node-0   127.0.0.1:5000/test/b@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb   812B
            node-0   hello:v1                                                                                        264.0KiB
        "#]]
        .assert_eq(&node_images(std::slice::from_ref(&n), Format::Table));
        let wide = node_images(std::slice::from_ref(&n), Format::Wide);
        assert!(wide.starts_with("NODE     IMAGE"), "{wide}");
        assert!(
            wide.contains(&format!("1.9MiB     sha256:{}", "a".repeat(64))),
            "{wide}"
        );
        assert!(wide.contains("264.0KiB   <none>"), "{wide}");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(3 << 30), "3.0GiB");
    }

    #[test]
    fn describe_node_shows_runtime_conditions_and_images() {
        let d = describe_node(&node_with_images());
        assert!(d.contains("Runtime:      runc://1.1.5\n"), "{d}");
        assert!(
            d.contains("  ContainerRuntimeVulnerable   True     KnownVulnerabilities"),
            "{d}"
        );
        assert!(
            d.contains("Images:       3\n  1.9MiB  127.0.0.1:5000/test/a:v1, "),
            "{d}"
        );
    }

    #[test]
    fn pod_status_shows_init_progress_as_kubectl_does() {
        let pod = |init: &str| {
            let j = format!(
                r#"{{"kind":"Pod","metadata":{{"name":"p"}},"spec":{{"initContainers":[{{"name":"a","image":"x"}},{{"name":"b","image":"x"}}],"containers":[{{"name":"c","image":"x"}}]}},"status":{{"phase":"Pending","initContainerStatuses":[{init}],"containerStatuses":[{{"name":"c","ready":false,"restartCount":0,"state":{{"waiting":{{"reason":"PodInitializing"}}}}}}]}}}}"#
            );
            let Object::Pod(p) = Object::from_json_str(&j).unwrap() else {
                unreachable!()
            };
            pod_status(&p)
        };
        let st = |name: &str, state: &str| {
            format!(r#"{{"name":"{name}","ready":false,"restartCount":0,"state":{state}}}"#)
        };
        let done = st("a", r#"{"terminated":{"exitCode":0,"reason":"Completed"}}"#);
        let waiting = |r: &str| format!(r#"{{"waiting":{{"reason":"{r}"}}}}"#);
        let cases = [
            format!(
                "{},{}",
                st("a", &waiting("PodInitializing")),
                st("b", &waiting("PodInitializing"))
            ),
            format!("{done},{}", st("b", r#"{"running":{"startedAt":"t"}}"#)),
            format!("{done},{}", st("b", &waiting("CrashLoopBackOff"))),
            format!(
                "{done},{}",
                st("b", r#"{"terminated":{"exitCode":3,"reason":"Error"}}"#)
            ),
            format!("{done},{}", st("b", r#"{"terminated":{"exitCode":3}}"#)),
            format!(
                "{done},{}",
                st("b", r#"{"terminated":{"exitCode":0,"reason":"Completed"}}"#)
            ),
        ];
        let got: Vec<String> = cases.iter().map(|c| pod(c)).collect();
        assert_eq!(
            got,
            [
                "Init:0/2",
                "Init:1/2",
                "Init:CrashLoopBackOff",
                "Init:Error",
                "Init:ExitCode:3",
                "PodInitializing"
            ]
        );
        // A sidecar that has started is past; one that has not holds the count.
        let sidecar = |started: bool| {
            let j = format!(
                r#"{{"kind":"Pod","metadata":{{"name":"p"}},"spec":{{"initContainers":[{{"name":"s","image":"x","restartPolicy":"Always"}},{{"name":"b","image":"x"}}],"containers":[{{"name":"c","image":"x"}}]}},"status":{{"initContainerStatuses":[{{"name":"s","ready":{started},"restartCount":0,"started":{started},"state":{{"running":{{"startedAt":"t"}}}}}},{{"name":"b","ready":false,"restartCount":0,"state":{{"running":{{"startedAt":"t"}}}}}}]}}}}"#
            );
            let Object::Pod(p) = Object::from_json_str(&j).unwrap() else {
                unreachable!()
            };
            pod_status(&p)
        };
        assert_eq!([sidecar(false), sidecar(true)], ["Init:0/2", "Init:1/2"]);
    }

    #[test]
    fn initialized_pods_show_sidecar_trouble_and_count_restarts_as_kubectl_does() {
        // An initialized pod with a sidecar `s` (state given) beside container `c`.
        let pod = |side: serde_json::Value, c: serde_json::Value, initialized: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"initContainers": [
                    {"name": "once", "image": "x"},
                    {"name": "s", "image": "x", "restartPolicy": "Always"}],
                    "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Initialized", "status": initialized}],
                    "initContainerStatuses": [
                        {"name": "once", "ready": false, "restartCount": 2,
                         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                        side],
                    "containerStatuses": [c]}
            }))
            .unwrap()
        };
        let running = serde_json::json!({"name": "c", "ready": true, "restartCount": 1,
            "state": {"running": {"startedAt": "t"}}});
        let crashing = serde_json::json!({"name": "s", "ready": false, "restartCount": 4, "started": false,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}});
        let p = pod(crashing.clone(), running.clone(), "True");
        assert_eq!(
            pod_columns(&p),
            ("Init:CrashLoopBackOff".into(), 5),
            "the sidecar's and the container's restarts"
        );
        assert_eq!(p.restarts(), 7, "controllers count every restart");
        let serving = serde_json::json!({"name": "s", "ready": false, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "t"}}});
        assert_eq!(
            pod_status(&pod(serving.clone(), running, "True")),
            "Running"
        );
        let stopped = serde_json::json!({"name": "s", "ready": false, "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": 143, "reason": "Error"}}});
        let done = serde_json::json!({"name": "c", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        assert_eq!(pod_status(&pod(stopped, done.clone(), "True")), "Completed");
        assert_eq!(
            pod_status(&pod(serving, done.clone(), "False")),
            "Completed"
        );
        let p = pod(crashing, done, "False");
        assert_eq!(
            pod_columns(&p),
            ("Init:CrashLoopBackOff".into(), 6),
            "the init containers' restarts while initializing"
        );
    }

    #[test]
    fn services_slices_and_endpoints_as_kubectl_shows_them() {
        let now = humantime::parse_rfc3339("2026-12-01T12:10:00Z").unwrap();
        let objs: Vec<Object> = [
            r#"{"kind":"Service","metadata":{"name":"web","namespace":"default","creationTimestamp":"2026-12-01T12:00:00Z"},"spec":{"type":"ClusterIP","selector":{"app":"web"},"clusterIP":"10.43.0.7","ports":[{"name":"http","port":80,"protocol":"TCP"},{"name":"dns","port":53,"protocol":"UDP"}]}}"#,
            r#"{"kind":"Service","metadata":{"name":"np","namespace":"default","creationTimestamp":"2026-12-01T12:00:00Z"},"spec":{"type":"NodePort","clusterIP":"10.43.0.8","ports":[{"port":80,"nodePort":30080,"protocol":"TCP"}]}}"#,
            r#"{"kind":"Service","metadata":{"name":"ext","namespace":"default","creationTimestamp":"2026-12-01T12:00:00Z"},"spec":{"type":"ExternalName","externalName":"db.example.com"}}"#,
        ]
        .iter()
        .map(|j| Object::from_json_str(j).unwrap())
        .collect();
        expect_test::expect![[r#"
            NAME   TYPE           CLUSTER-IP   EXTERNAL-IP      PORT(S)         AGE   SELECTOR
            web    ClusterIP      10.43.0.7    <none>           80/TCP,53/UDP   10m   app=web
            np     NodePort       10.43.0.8    <none>           80:30080/TCP    10m   <none>
            ext    ExternalName   <none>       db.example.com   <none>          10m   <none>
        "#]]
        .assert_eq(&render_at(Kind::Service, &objs, Format::Wide, false, now));
        let slice = |name: &str, ips: &[(&str, bool)]| -> EndpointSlice {
            let eps: Vec<serde_json::Value> = ips
                .iter()
                .map(|(ip, ready)| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}}))
                .collect();
            serde_json::from_value(serde_json::json!({"kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-12-01T12:05:00Z",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080}]}))
            .unwrap()
        };
        let slices = [
            slice("web-a", &[("10.42.0.2", true), ("10.42.0.3", false)]),
            slice(
                "web-b",
                &[
                    ("10.42.1.2", true),
                    ("10.42.1.3", true),
                    ("10.42.1.4", true),
                ],
            ),
        ];
        let as_objects: Vec<Object> = slices.iter().cloned().map(Object::EndpointSlice).collect();
        expect_test::expect![[r#"
            NAME    ADDRESSTYPE   PORTS   ENDPOINTS                       AGE
            web-a   IPv4          8080    10.42.0.2,10.42.0.3             5m
            web-b   IPv4          8080    10.42.1.2,10.42.1.3,10.42.1.4   5m
        "#]]
        .assert_eq(&render_at(
            Kind::EndpointSlice,
            &as_objects,
            Format::Table,
            false,
            now,
        ));
        expect_test::expect![[r#"
            NAME   ENDPOINTS                                                  AGE
            web    10.42.0.2:8080,10.42.1.2:8080,10.42.1.3:8080 + 1 more...   5m
        "#]]
        .assert_eq(&endpoints(&slices, Format::Table, now));
        let yaml = endpoints(&slices, Format::Yaml, now);
        assert!(
            yaml.contains("notReadyAddresses:\n    - ip: 10.42.0.3"),
            "{yaml}"
        );
    }

    #[test]
    fn durations_like_kubectl() {
        let d = |s| human_duration(Duration::from_secs(s));
        assert_eq!(
            [
                d(5),
                d(119),
                d(192),
                d(600),
                d(3 * 3600 + 120),
                d(20 * 3600),
                d(3 * 86400 + 4 * 3600),
                d(12 * 86400)
            ],
            ["5s", "119s", "3m12s", "10m", "3h2m", "20h", "3d4h", "12d"]
        );
    }

    #[test]
    fn statefulset_and_claim_tables() {
        let sts: Object = Object::from_json(serde_json::json!({
            "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3},
            "status": {"readyReplicas": 2}
        }))
        .unwrap();
        let pvc = |name: &str, bound: bool| {
            let mut v = serde_json::json!({
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            });
            if bound {
                v["spec"]["volumeName"] = "pvc-1234".into();
                v["spec"]["storageClassName"] = "local".into();
                v["status"] = serde_json::json!({"phase": "Bound", "accessModes": ["ReadWriteOnce", "ReadWriteOncePod"], "capacity": {"storage": "1Gi"}});
            }
            Object::from_json(v).unwrap()
        };
        expect_test::expect![[r#"
            NAME   READY   AGE
            web    2/3     <unknown>
        "#]]
        .assert_eq(&render(Kind::StatefulSet, &[sts], Format::Table, false));
        expect_test::expect![[r#"
            NAME         STATUS    VOLUME     CAPACITY   ACCESS MODES   STORAGECLASS   AGE
            data-web-0   Bound     pvc-1234   1Gi        RWO,RWOP       local          <unknown>
            data-web-1   Pending                                        <unset>        <unknown>
        "#]]
        .assert_eq(&render(
            Kind::PersistentVolumeClaim,
            &[pvc("data-web-0", true), pvc("data-web-1", false)],
            Format::Table,
            false,
        ));
    }

    #[test]
    fn wide_nodes_show_their_pod_cidr() {
        let node = |name: &str, cidr: Option<&str>| {
            let mut v = serde_json::json!({
                "kind": "Node",
                "metadata": {"name": name},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.1.7"}],
                    "nodeInfo": {"kubeletVersion": "v0.1.0", "operatingSystem": "linux", "kernelVersion": "6.1.0", "architecture": "arm64"}
                }
            });
            if let Some(c) = cidr {
                v["spec"] = serde_json::json!({"podCIDR": c, "podCIDRs": [c]});
            }
            Object::from_json(v).unwrap()
        };
        let nodes = [node("pi-1", Some("10.42.0.0/24")), node("pi-2", None)];
        expect_test::expect![[r#"
            NAME   STATUS   ROLES    AGE         VERSION   INTERNAL-IP   OS-IMAGE   KERNEL-VERSION   ARCH    CONTAINER-RUNTIME   POD-CIDR
            pi-1   Ready    <none>   <unknown>   v0.1.0    192.168.1.7   linux      6.1.0            arm64   <none>              10.42.0.0/24
            pi-2   Ready    <none>   <unknown>   v0.1.0    192.168.1.7   linux      6.1.0            arm64   <none>              <none>
        "#]]
        .assert_eq(&render(Kind::Node, &nodes, Format::Wide, false));
        assert!(!render(Kind::Node, &nodes, Format::Table, false).contains("POD-CIDR"));
    }

    fn event(name: &str, kind: &str, obj: &str, ty: &str, reason: &str, msg: &str) -> Object {
        Object::from_json(serde_json::json!({
            "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": kind, "name": obj, "namespace": "default", "uid": "u"},
            "type": ty,
            "reason": reason,
            "message": msg,
            "count": 1,
            "firstTimestamp": "2026-03-01T10:00:00Z",
            "lastTimestamp": "2026-03-01T10:00:00Z",
            "source": {"component": "agent", "host": "node-0"},
        }))
        .unwrap()
    }

    fn events_fixture() -> Vec<Object> {
        let mut backoff = event(
            "web-1.b",
            "Pod",
            "web-1",
            "Warning",
            "BackOff",
            "Back-off restarting failed container web in pod web-1_default(u)",
        );
        if let Object::Event(e) = &mut backoff {
            e.count = 4;
            e.first_timestamp = "2026-03-01T10:00:30Z".into();
            e.last_timestamp = "2026-03-01T10:02:50Z".into();
        }
        let mut scheduled = event(
            "web-1.a",
            "Pod",
            "web-1",
            "Normal",
            "Scheduled",
            "Successfully assigned default/web-1 to node-0",
        );
        if let Object::Event(e) = &mut scheduled {
            e.source.component = "default-scheduler".into();
            e.source.host.clear();
        }
        let pulled = event(
            "web-1.c",
            "Pod",
            "web-1",
            "Normal",
            "Pulled",
            "Successfully pulled image \"hello:latest\" in 12ms",
        );
        vec![backoff, scheduled, pulled]
    }

    fn at(t: &str) -> SystemTime {
        humantime::parse_rfc3339(t).unwrap()
    }

    #[test]
    fn events_table_is_sorted_by_last_seen() {
        let now = at("2026-03-01T10:03:00Z");
        expect_test::expect![[r#"
            LAST SEEN   TYPE      REASON      OBJECT      MESSAGE
            3m          Normal    Scheduled   pod/web-1   Successfully assigned default/web-1 to node-0
            3m          Normal    Pulled      pod/web-1   Successfully pulled image "hello:latest" in 12ms
            10s         Warning   BackOff     pod/web-1   Back-off restarting failed container web in pod web-1_default(u)
        "#]]
        .assert_eq(&render_at(Kind::Event, &events_fixture(), Format::Table, false, now));
        expect_test::expect![[r#"
            NAMESPACE   LAST SEEN   TYPE      REASON      OBJECT      SOURCE              MESSAGE                                                            FIRST SEEN   COUNT   NAME
            default     3m          Normal    Scheduled   pod/web-1   default-scheduler   Successfully assigned default/web-1 to node-0                      3m           1       web-1.a
            default     3m          Normal    Pulled      pod/web-1   agent, node-0       Successfully pulled image "hello:latest" in 12ms                   3m           1       web-1.c
            default     10s         Warning   BackOff     pod/web-1   agent, node-0       Back-off restarting failed container web in pod web-1_default(u)   2m30s        4       web-1.b
        "#]]
        .assert_eq(&render_at(Kind::Event, &events_fixture(), Format::Wide, true, now));
    }

    #[test]
    fn describe_ends_with_events() {
        let now = at("2026-03-01T10:03:00Z");
        let events: Vec<Event> = events_fixture()
            .into_iter()
            .filter_map(|o| match o {
                Object::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        expect_test::expect![[r#"
            Events:
              Type     Reason     Age                  From               Message
              ----     ------     ----                 ----               -------
              Normal   Scheduled  3m                   default-scheduler  Successfully assigned default/web-1 to node-0
              Normal   Pulled     3m                   agent              Successfully pulled image "hello:latest" in 12ms
              Warning  BackOff    10s (x4 over 2m30s)  agent              Back-off restarting failed container web in pod web-1_default(u)
        "#]]
        .assert_eq(&events_section(&events, now));
        expect_test::expect![[r#"
            Events:       <none>
        "#]]
        .assert_eq(&events_section(&[], now));
    }

    #[test]
    fn aligned_table() {
        let t = table(
            &["NAME", "READY"],
            &[
                vec!["web-1".into(), "1/1".into()],
                vec!["a".into(), "0/1".into()],
            ],
        );
        assert_eq!(t, "NAME    READY\nweb-1   1/1\na       0/1\n");
    }
}
