//! The scheduler: binds pending pods to nodes. Each pass is snapshot -> plan -> apply inside one
//! redb write transaction, so a plan never acts on stale state. Placement itself is pure.
//! Claims are bound WaitForFirstConsumer: a pod whose claims name a node (annotation
//! `volume.kubernetes.io/selected-node`) may only go there; the first pod bound with a claim
//! that names none writes its node into the claim, in the same transaction.
use crate::Hub;
use crate::controller::{BatchKind, next_batch};
use crate::events;
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{
    Condition, EventType, Kind, LabelSelector, Node, Object, PersistentVolumeClaim, Pod,
    PodAffinityTerm, PodSpec, SELECTED_NODE_ANNOTATION, Taint, UNSCHEDULABLE_TAINT,
};
use flotilla_proto::scheduling::{self, NO_EXECUTE, NO_SCHEDULE, PREFER_NO_SCHEDULE};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The source component of the scheduler's events (Kubernetes' name).
const COMPONENT: &str = "default-scheduler";

pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let mut rx = hub.store.subscribe();
    pass_logged(&hub);
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            b = next_batch(&mut rx, Duration::from_secs(10), None, |e| match e.key.kind {
                Kind::Pod if !wakes_scheduler(e) => vec![],
                Kind::Pod | Kind::Node | Kind::PersistentVolumeClaim => vec![()],
                _ => vec![],
            }) => b,
        };
        match batch {
            None => return,
            Some(BatchKind::Resync | BatchKind::Keys(_)) => pass_logged(&hub),
        }
    }
}

/// Whether a change of a pod can change what the scheduler would do. A bound pod's status
/// report (the agents' steady stream) cannot, unless it ends the pod, which gives its share
/// of the node back; skipping them spares a write transaction and its fsync per report.
fn wakes_scheduler(e: &crate::store::StoreEvent) -> bool {
    match (&e.prev, &e.object) {
        (Some(Object::Pod(before)), Some(Object::Pod(after))) => {
            before.spec.node_name.is_none()
                || before.spec != after.spec
                || before.metadata.labels != after.metadata.labels
                || before.is_terminal() != after.is_terminal()
        }
        _ => true,
    }
}

fn pass_logged(hub: &Hub) {
    if let Err(e) = hub.store.write(pass) {
        warn!(error = %e, "scheduling pass failed");
    }
}

fn pass(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let nodes: Vec<Node> = crate::controller::nodes(tx)?;
    let mut pending: Vec<Pod> = Vec::new();
    let mut bound: Vec<Pod> = Vec::new();
    for o in tx.list(Kind::Pod, None)? {
        let Object::Pod(p) = o else { continue };
        if p.is_terminal() {
            continue;
        }
        if p.spec.node_name.is_some() {
            bound.push(p);
        } else {
            pending.push(p);
        }
    }
    pending.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    let mut claims: HashMap<ClaimKey, PersistentVolumeClaim> = tx
        .list(Kind::PersistentVolumeClaim, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::PersistentVolumeClaim(c) => {
                Some(((c.namespace().to_string(), c.metadata.name.clone()), c))
            }
            _ => None,
        })
        .collect();
    // Pods bound without the scheduler (spec.nodeName in the manifest) pin their claims too.
    for p in &bound {
        if let Some(node) = p.spec.node_name.as_deref() {
            bind_claims(tx, &mut claims, p, node)?;
        }
    }
    let mut snapshot = Snapshot::new(nodes, &bound).with_claims(claims.values().cloned().collect());
    let now = SystemTime::now();
    for mut pod in pending {
        let event = match snapshot.place(&pod) {
            Ok(i) => {
                snapshot.bind(&pod, i);
                let node = snapshot.nodes[i].node.metadata.name.clone();
                info!(pod = %pod.metadata.name, node = %node, "scheduled");
                for key in bind_claims(tx, &mut claims, &pod, &node)? {
                    snapshot.claim_selected(key, &node);
                }
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    namespace(&pod),
                    pod.metadata.name
                );
                pod.spec.node_name = Some(node);
                set_scheduled(&mut pod, "True", None, None);
                Some((EventType::Normal, "Scheduled", message))
            }
            // An event only when the reason changes, not on every pass.
            Err(message) => set_scheduled(
                &mut pod,
                "False",
                Some("Unschedulable"),
                Some(message.clone()),
            )
            .then_some((EventType::Warning, "FailedScheduling", message)),
        };
        if let Some((type_, reason, message)) = event {
            let pod = tx.put(Object::Pod(pod))?;
            events::about(tx, &pod, type_, reason, &message, COMPONENT, now)?;
        }
    }
    Ok(())
}

/// A claim by (namespace, name).
type ClaimKey = (String, String);

/// Binds the claims of `pod`, now on `node`: a claim without a node gets this one, and every
/// claim is Bound (volume `pvc-<uid>`, capacity as requested). Returns the claims that
/// were given a node.
fn bind_claims(
    tx: &mut Tx<'_>,
    claims: &mut HashMap<ClaimKey, PersistentVolumeClaim>,
    pod: &Pod,
    node: &str,
) -> Result<Vec<ClaimKey>, StoreError> {
    let mut selected = Vec::new();
    for c in pod.spec.claims() {
        let key = (namespace(pod).to_string(), c.claim_name.clone());
        let Some(claim) = claims.get_mut(&key) else {
            continue;
        };
        let mut next = claim.clone();
        if next.selected_node().is_none() {
            next.metadata
                .annotations
                .insert(SELECTED_NODE_ANNOTATION.into(), node.into());
            info!(claim = %c.claim_name, node = %node, "claim bound to node");
            selected.push(key);
        }
        next.status.phase = "Bound".into();
        if next.spec.volume_name.is_none() {
            next.spec.volume_name = Some(format!("pvc-{}", next.metadata.uid));
        }
        next.status.access_modes = next.spec.access_modes.clone();
        if let Some(q) = next.spec.resources.requests.get("storage") {
            next.status.capacity.insert("storage".into(), q.clone());
        }
        if next != *claim {
            tx.put(Object::PersistentVolumeClaim(next.clone()))?;
            *claim = next;
        }
    }
    Ok(selected)
}

/// Sets the PodScheduled condition; returns whether anything changed.
fn set_scheduled(
    pod: &mut Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> bool {
    let cond = Condition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        ..Default::default()
    };
    let conds = &mut pod.status.conditions;
    if let Some(existing) = conds.iter_mut().find(|c| c.type_ == "PodScheduled") {
        if existing.status == cond.status && existing.message == cond.message {
            return false;
        }
        *existing = Condition {
            last_transition_time: Some(crate::store::now_rfc3339()),
            ..cond
        };
    } else {
        conds.push(Condition {
            last_transition_time: Some(crate::store::now_rfc3339()),
            ..cond
        });
    }
    true
}

/// What a pass knows about one node, kept current as the pass binds pods.
struct NodeState {
    node: Node,
    ready: bool,
    /// Allocatable (millicores, bytes), parsed once per pass.
    alloc: (u64, u64),
    cpu: u64,
    mem: u64,
    ports: HashSet<i32>,
}

/// The parts of a bound pod that later placements look at.
struct BoundPod {
    namespace: String,
    labels: BTreeMap<String, String>,
    node: usize,
    /// Its required anti-affinity terms, which repel matching newcomers (symmetry).
    anti: Vec<PodAffinityTerm>,
}

/// The cluster as one scheduling pass sees it. Building it is linear in pods; placing a pod
/// with no inter-pod terms is linear in nodes, so a pass over a large backlog stays fast.
pub struct Snapshot {
    nodes: Vec<NodeState>,
    index: HashMap<String, usize>,
    bound: Vec<BoundPod>,
    /// Pods per node, by controller uid: the default spreading of a workload's replicas.
    siblings: HashMap<String, Vec<u32>>,
    /// Matching pods per topology domain for each (namespaces, selector, key) a term has asked
    /// about, kept current by [`Snapshot::bind`], so a backlog of pods with the same terms
    /// does not rescan every bound pod for each placement.
    counted: RefCell<HashMap<String, DomainCounts>>,
    /// What placement needs of each claim, by (namespace, name).
    claims: HashMap<ClaimKey, ClaimState>,
    /// A pod using each claim, for ReadWriteOncePod.
    claim_users: HashMap<ClaimKey, String>,
}

struct ClaimState {
    selected_node: Option<String>,
    single_pod: bool,
}

struct DomainCounts {
    namespaces: Vec<String>,
    selector: LabelSelector,
    key: String,
    by_domain: HashMap<String, i64>,
}

impl Snapshot {
    pub fn new(nodes: Vec<Node>, bound: &[Pod]) -> Snapshot {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.metadata.name.clone(), i))
            .collect();
        let mut snapshot = Snapshot {
            nodes: nodes
                .into_iter()
                .map(|node| NodeState {
                    ready: node.is_ready(),
                    alloc: node.allocatable(),
                    node,
                    cpu: 0,
                    mem: 0,
                    ports: HashSet::new(),
                })
                .collect(),
            index,
            bound: Vec::new(),
            siblings: HashMap::new(),
            counted: RefCell::new(HashMap::new()),
            claims: HashMap::new(),
            claim_users: HashMap::new(),
        };
        for p in bound {
            if p.is_terminal() {
                continue;
            }
            let Some(i) = p
                .spec
                .node_name
                .as_ref()
                .and_then(|n| snapshot.index.get(n))
            else {
                continue;
            };
            snapshot.bind(p, *i);
        }
        snapshot
    }

    /// The claims pods may use; a pod naming any other claim is not placed.
    pub fn with_claims(mut self, claims: Vec<PersistentVolumeClaim>) -> Snapshot {
        for c in claims {
            let state = ClaimState {
                selected_node: c.selected_node().map(String::from),
                single_pod: c.single_pod(),
            };
            self.claims
                .insert((c.namespace().to_string(), c.metadata.name), state);
        }
        self
    }

    /// Records that a claim now lives on `node` (its first pod was just bound there).
    fn claim_selected(&mut self, key: ClaimKey, node: &str) {
        if let Some(c) = self.claims.get_mut(&key) {
            c.selected_node = Some(node.to_string());
        }
    }

    /// The nodes `pod`'s claims confine it to (none: anywhere), or why it cannot be placed
    /// at all: a claim is missing, or is ReadWriteOncePod and another pod has it.
    fn claim_nodes(&self, pod: &Pod) -> Result<Vec<&str>, String> {
        let ns = namespace(pod);
        let mut nodes: Vec<&str> = Vec::new();
        for c in pod.spec.claims() {
            let key = (ns.to_string(), c.claim_name.clone());
            let unavailable =
                |why: String| format!("0/{} nodes are available: {why}.", self.nodes.len());
            let Some(claim) = self.claims.get(&key) else {
                return Err(unavailable(format!(
                    "persistentvolumeclaim {:?} not found",
                    c.claim_name
                )));
            };
            if claim.single_pod
                && let Some(user) = self.claim_users.get(&key)
                && *user != pod.metadata.name
            {
                return Err(unavailable(format!(
                    "persistentvolumeclaim {:?} has access mode ReadWriteOncePod and pod {user:?} uses it",
                    c.claim_name
                )));
            }
            if let Some(n) = claim.selected_node.as_deref()
                && !nodes.contains(&n)
            {
                nodes.push(n);
            }
        }
        Ok(nodes)
    }

    /// Accounts for `pod` running on node `i`.
    pub fn bind(&mut self, pod: &Pod, i: usize) {
        for c in pod.spec.claims() {
            self.claim_users
                .entry((namespace(pod).to_string(), c.claim_name.clone()))
                .or_insert_with(|| pod.metadata.name.clone());
        }
        let (cpu, mem) = pod.spec.requests();
        let n = &mut self.nodes[i];
        n.cpu += cpu;
        n.mem += mem;
        n.ports.extend(pod.spec.host_ports());
        if let Some(uid) = pod.controller_uid() {
            let counts = self
                .siblings
                .entry(uid.to_string())
                .or_insert_with(|| vec![0; self.nodes.len()]);
            counts[i] += 1;
        }
        let ns = namespace(pod);
        for c in self.counted.get_mut().values_mut() {
            if c.namespaces.iter().any(|n| n == ns)
                && c.selector.matches(&pod.metadata.labels)
                && let Some(v) = self.nodes[i].node.metadata.labels.get(&c.key)
            {
                *c.by_domain.entry(v.clone()).or_default() += 1;
            }
        }
        self.bound.push(BoundPod {
            namespace: namespace(pod).to_string(),
            labels: pod.metadata.labels.clone(),
            node: i,
            anti: pod
                .spec
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .map(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
        });
    }

    fn label(&self, node: usize, key: &str) -> Option<&str> {
        self.nodes[node]
            .node
            .metadata
            .labels
            .get(key)
            .map(String::as_str)
    }

    /// Bound pods in `namespaces` matching `selector`, per topology domain (the value of `key`
    /// on their node). No selector selects no pods, as in Kubernetes.
    fn counted(
        &self,
        namespaces: &[String],
        selector: Option<&LabelSelector>,
        key: &str,
    ) -> HashMap<String, i64> {
        let Some(selector) = selector else {
            return HashMap::new();
        };
        let id = serde_json::to_string(&(namespaces, selector, key)).unwrap_or_default();
        let mut cache = self.counted.borrow_mut();
        let entry = cache.entry(id).or_insert_with(|| {
            let mut by_domain = HashMap::new();
            for b in &self.bound {
                if namespaces.contains(&b.namespace)
                    && selector.matches(&b.labels)
                    && let Some(v) = self.label(b.node, key)
                {
                    *by_domain.entry(v.to_string()).or_default() += 1;
                }
            }
            DomainCounts {
                namespaces: namespaces.to_vec(),
                selector: selector.clone(),
                key: key.to_string(),
                by_domain,
            }
        });
        entry.by_domain.clone()
    }

    /// Matching bound pods per topology domain for one of `pod`'s terms.
    fn domains(&self, pod: &Pod, term: &PodAffinityTerm) -> HashMap<String, i64> {
        let own = [namespace(pod).to_string()];
        let namespaces = if term.namespaces.is_empty() {
            &own[..]
        } else {
            &term.namespaces[..]
        };
        self.counted(namespaces, term.label_selector.as_ref(), &term.topology_key)
    }

    /// Picks a node index for `pod`, or explains (the kubectl way) why none fits.
    pub fn place(&self, pod: &Pod) -> Result<usize, String> {
        let spec = &pod.spec;
        let (want_cpu, want_mem) = spec.requests();
        let want_ports: Vec<i32> = spec.host_ports().collect();
        let terms = Terms::of(self, pod);
        let siblings = pod
            .controller_uid()
            .and_then(|u| self.siblings.get(u))
            .map(Vec::as_slice);
        // Claims on two different nodes leave no node; one confines the pod to it.
        let claim_nodes = self.claim_nodes(pod)?;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(Score, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let node = &n.node;
            let refused = if !n.ready {
                Some("node(s) were not ready".to_string())
            } else if node.spec.unschedulable && !tolerates_cordon(spec) {
                Some("node(s) were unschedulable".into())
            } else if let Some(t) = scheduling::untolerated(
                &node.spec.taints,
                &spec.tolerations,
                &[NO_SCHEDULE, NO_EXECUTE],
            ) {
                Some(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key, t.value
                ))
            } else if !scheduling::node_matches(spec, node) {
                Some("node(s) didn't match Pod's node affinity/selector".into())
            } else if want_ports.iter().any(|p| n.ports.contains(p)) {
                Some("node(s) didn't have free ports for the requested pod ports".into())
            } else if n.cpu + want_cpu > n.alloc.0 {
                Some("Insufficient cpu".into())
            } else if n.mem + want_mem > n.alloc.1 {
                Some("Insufficient memory".into())
            } else if !claim_nodes.is_empty()
                && (claim_nodes.len() > 1 || claim_nodes[0] != node.metadata.name)
            {
                Some("node(s) had volume node affinity conflict".into())
            } else {
                terms.refuses(self, i).map(String::from)
            };
            if let Some(r) = refused {
                *reasons.entry(r).or_default() += 1;
                continue;
            }
            let alloc_mem = n.alloc.1;
            let score = Score {
                soft_taints: node
                    .spec
                    .taints
                    .iter()
                    .filter(|t| {
                        t.effect == PREFER_NO_SCHEDULE
                            && !spec.tolerations.iter().any(|tol| tol.tolerates(t))
                    })
                    .count(),
                preference: -(scheduling::preferred_node_score(spec, node)
                    + terms.preference(self, i)),
                spread: terms.spread_score(self, i),
                siblings: siblings.map_or(0, |s| s[i]),
                load: ((n.mem + want_mem) * 1000)
                    .checked_div(alloc_mem)
                    .unwrap_or(0),
            };
            let better = match &best {
                None => true,
                Some((s, b)) => {
                    score < *s
                        || (score == *s && node.metadata.name < self.nodes[*b].node.metadata.name)
                }
            };
            if better {
                best = Some((score, i));
            }
        }
        match best {
            Some((_, i)) => Ok(i),
            None => {
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                Err(format!(
                    "0/{} nodes are available: {}.",
                    self.nodes.len(),
                    detail.join(", ")
                ))
            }
        }
    }
}

/// Ranks feasible nodes, lowest first, field by field: untolerated PreferNoSchedule taints,
/// then preferred (anti-)affinity weight, then spread (ScheduleAnyway constraints, then the
/// replicas of the same controller already there), then memory load.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    soft_taints: usize,
    preference: i64,
    spread: i64,
    siblings: u32,
    load: u64,
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Whether a term of `pod` selects a pod in `ns` with `labels`.
fn term_selects(
    pod: &Pod,
    term: &PodAffinityTerm,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let in_ns = if term.namespaces.is_empty() {
        ns == namespace(pod)
    } else {
        term.namespaces.iter().any(|n| n == ns)
    };
    // A term without a selector selects no pods, as in Kubernetes.
    in_ns
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| s.matches(labels))
}

fn tolerates_cordon(spec: &PodSpec) -> bool {
    let taint = Taint {
        key: UNSCHEDULABLE_TAINT.into(),
        effect: NO_SCHEDULE.into(),
        ..Default::default()
    };
    spec.tolerations.iter().any(|t| t.tolerates(&taint))
}

/// A pending pod's inter-pod terms, resolved against the snapshot once per pod.
struct Terms<'a> {
    /// (topology key, matching pods per domain) for required affinity; `None` counts when no
    /// pod matches anywhere and the pod matches its own term (the first replica may go anywhere).
    affinity: Vec<(&'a str, Option<HashMap<String, i64>>)>,
    anti: Vec<(&'a str, HashMap<String, i64>)>,
    /// Domains existing pods' required anti-affinity closes to this pod.
    repelled: Vec<(&'a str, &'a str)>,
    /// (weight, topology key, matching pods per domain); negative weights for anti-affinity.
    preferred: Vec<(i64, &'a str, HashMap<String, i64>)>,
    spread: Vec<Spread<'a>>,
}

struct Spread<'a> {
    key: &'a str,
    max_skew: i64,
    hard: bool,
    counts: HashMap<&'a str, i64>,
    min: i64,
    self_match: i64,
}

impl<'a> Terms<'a> {
    fn of(s: &'a Snapshot, pod: &'a Pod) -> Terms<'a> {
        let mut t = Terms {
            affinity: vec![],
            anti: vec![],
            repelled: vec![],
            preferred: vec![],
            spread: vec![],
        };
        let affinity = pod.spec.affinity.as_ref();
        if let Some(pa) = affinity.and_then(|a| a.pod_affinity.as_ref()) {
            for term in &pa.required_during_scheduling_ignored_during_execution {
                let counts = s.domains(pod, term);
                let anywhere = counts.is_empty()
                    && term_selects(pod, term, namespace(pod), &pod.metadata.labels);
                t.affinity
                    .push((term.topology_key.as_str(), (!anywhere).then_some(counts)));
            }
            for w in &pa.preferred_during_scheduling_ignored_during_execution {
                let term = &w.pod_affinity_term;
                t.preferred.push((
                    i64::from(w.weight),
                    term.topology_key.as_str(),
                    s.domains(pod, term),
                ));
            }
        }
        if let Some(pa) = affinity.and_then(|a| a.pod_anti_affinity.as_ref()) {
            for term in &pa.required_during_scheduling_ignored_during_execution {
                t.anti
                    .push((term.topology_key.as_str(), s.domains(pod, term)));
            }
            for w in &pa.preferred_during_scheduling_ignored_during_execution {
                let term = &w.pod_affinity_term;
                t.preferred.push((
                    -i64::from(w.weight),
                    term.topology_key.as_str(),
                    s.domains(pod, term),
                ));
            }
        }
        for b in s.bound.iter().filter(|b| !b.anti.is_empty()) {
            for term in &b.anti {
                let in_ns = if term.namespaces.is_empty() {
                    b.namespace == namespace(pod)
                } else {
                    term.namespaces.iter().any(|n| n == namespace(pod))
                };
                if in_ns
                    && term
                        .label_selector
                        .as_ref()
                        .is_some_and(|sel| sel.matches(&pod.metadata.labels))
                    && let Some(v) = s.label(b.node, &term.topology_key)
                {
                    t.repelled.push((term.topology_key.as_str(), v));
                }
            }
        }
        for c in &pod.spec.topology_spread_constraints {
            let key = c.topology_key.as_str();
            // Domains are the values of the key on nodes the pod may use (nodeAffinityPolicy
            // Honor); pods count where their node is in such a domain.
            let mut counts: HashMap<&str, i64> = HashMap::new();
            for (i, n) in s.nodes.iter().enumerate() {
                if scheduling::node_matches(&pod.spec, &n.node)
                    && let Some(v) = s.label(i, key)
                {
                    counts.entry(v).or_insert(0);
                }
            }
            let matching = s.counted(
                &[namespace(pod).to_string()],
                c.label_selector.as_ref(),
                key,
            );
            for (domain, n) in counts.iter_mut() {
                *n = matching.get(*domain).copied().unwrap_or(0);
            }
            let self_match = c
                .label_selector
                .as_ref()
                .is_some_and(|sel| sel.matches(&pod.metadata.labels));
            t.spread.push(Spread {
                key,
                max_skew: i64::from(c.max_skew),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                min: counts.values().copied().min().unwrap_or(0),
                counts,
                self_match: i64::from(self_match),
            });
        }
        t
    }

    /// Why node `i` breaks a required term, if it does.
    fn refuses(&self, s: &Snapshot, i: usize) -> Option<&'static str> {
        for (key, counts) in &self.affinity {
            let Some(counts) = counts else { continue };
            let ok = s
                .label(i, key)
                .is_some_and(|v| counts.get(v).copied().unwrap_or(0) > 0);
            if !ok {
                return Some("node(s) didn't match pod affinity rules");
            }
        }
        for (key, counts) in &self.anti {
            if s.label(i, key)
                .is_some_and(|v| counts.get(v).copied().unwrap_or(0) > 0)
            {
                return Some("node(s) didn't match pod anti-affinity rules");
            }
        }
        for (key, value) in &self.repelled {
            if s.label(i, key) == Some(value) {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules");
            }
        }
        for c in self.spread.iter().filter(|c| c.hard) {
            let ok = s.label(i, c.key).is_some_and(|v| {
                c.counts.get(v).copied().unwrap_or(0) + c.self_match - c.min <= c.max_skew
            });
            if !ok {
                return Some("node(s) didn't match pod topology spread constraints");
            }
        }
        None
    }

    /// Weight of preferred terms satisfied on node `i` (per matching pod, as Kubernetes counts).
    fn preference(&self, s: &Snapshot, i: usize) -> i64 {
        self.preferred
            .iter()
            .map(|(w, key, counts)| {
                s.label(i, key)
                    .map_or(0, |v| w * counts.get(v).copied().unwrap_or(0))
            })
            .sum()
    }

    /// Matching pods already in node `i`'s domains of soft spread constraints.
    fn spread_score(&self, s: &Snapshot, i: usize) -> i64 {
        self.spread
            .iter()
            .filter(|c| !c.hard)
            .map(|c| {
                s.label(i, c.key)
                    .map_or(i64::MAX / 4, |v| c.counts.get(v).copied().unwrap_or(0))
            })
            .sum()
    }
}

/// Picks a node name for `pod` among `nodes`, given the pods already bound.
pub fn place(pod: &Pod, nodes: &[Node], pods: &[Pod]) -> Result<String, String> {
    place_with_claims(pod, nodes, pods, &[])
}

/// [`place`] for pods that may use `claims`.
pub fn place_with_claims(
    pod: &Pod,
    nodes: &[Node],
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
) -> Result<String, String> {
    let s = Snapshot::new(nodes.to_vec(), pods).with_claims(claims.to_vec());
    s.place(pod).map(|i| s.nodes[i].node.metadata.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::ObjectKey as ObjectKeyOf;
    use flotilla_proto::api::{
        Affinity, Container, ContainerPort, LabelSelector, NodeAffinity, NodeSelectorRequirement,
        NodeSelectorTerm, OwnerReference, PodAffinity, PreferredSchedulingTerm, Toleration,
        TopologySpreadConstraint,
    };
    use flotilla_proto::quantity::Quantity;

    fn node(name: &str, cpu: &str, mem: &str, arch: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.metadata
            .labels
            .insert("kubernetes.io/arch".into(), arch.into());
        n.status
            .allocatable
            .insert("cpu".into(), Quantity(cpu.into()));
        n.status
            .allocatable
            .insert("memory".into(), Quantity(mem.into()));
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        });
        n
    }

    #[test]
    fn only_changes_that_matter_to_placement_wake_the_scheduler() {
        let event = |prev: Option<&Pod>, now: Option<&Pod>| crate::store::StoreEvent {
            revision: 1,
            key: Object::Pod(prev.or(now).unwrap().clone()).key(),
            object: now.cloned().map(Object::Pod),
            prev: prev.cloned().map(Object::Pod),
        };
        let pending = pod("a", "100m", "64Mi", None, "", None);
        let bound = pod("a", "100m", "64Mi", None, "", Some("n1"));
        let mut running = bound.clone();
        running.status.phase = "Running".into();
        let mut failed = running.clone();
        failed.status.phase = "Failed".into();
        let mut relabelled = running.clone();
        relabelled
            .metadata
            .labels
            .insert("tier".into(), "web".into());
        // A bound pod's status report does not; its end, its labels, a binding, a new or a
        // deleted pod, and any change of a pod still pending do.
        assert!(!wakes_scheduler(&event(Some(&bound), Some(&running))));
        assert!(wakes_scheduler(&event(Some(&running), Some(&failed))));
        assert!(wakes_scheduler(&event(Some(&running), Some(&relabelled))));
        assert!(wakes_scheduler(&event(Some(&pending), Some(&bound))));
        assert!(wakes_scheduler(&event(None, Some(&pending))));
        assert!(wakes_scheduler(&event(Some(&running), None)));
        let mut unschedulable = pending.clone();
        unschedulable.status.phase = "Pending".into();
        assert!(wakes_scheduler(&event(
            Some(&pending),
            Some(&unschedulable)
        )));
    }

    fn pod(
        name: &str,
        cpu: &str,
        mem: &str,
        host_port: Option<i32>,
        owner: &str,
        on: Option<&str>,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        let mut c = Container {
            name: "c".into(),
            image: "x".into(),
            ..Default::default()
        };
        c.resources
            .requests
            .insert("cpu".into(), Quantity(cpu.into()));
        c.resources
            .requests
            .insert("memory".into(), Quantity(mem.into()));
        if let Some(hp) = host_port {
            c.ports.push(ContainerPort {
                container_port: 80,
                host_port: Some(hp),
                ..Default::default()
            });
        }
        p.spec.containers.push(c);
        p.metadata.owner_references.push(OwnerReference {
            uid: owner.into(),
            controller: Some(true),
            ..Default::default()
        });
        p.spec.node_name = on.map(String::from);
        p
    }

    fn claim(name: &str, node: Option<&str>, mode: &str) -> PersistentVolumeClaim {
        let mut c = PersistentVolumeClaim::default();
        c.metadata.name = name.into();
        c.metadata.namespace = Some("default".into());
        c.spec.access_modes = vec![mode.into()];
        if let Some(n) = node {
            c.metadata
                .annotations
                .insert(SELECTED_NODE_ANNOTATION.into(), n.into());
        }
        c
    }

    fn with_claims(mut p: Pod, claims: &[&str]) -> Pod {
        p.metadata.namespace = Some("default".into());
        for c in claims {
            p.spec.volumes.push(flotilla_proto::api::Volume {
                name: format!("v-{c}"),
                persistent_volume_claim: Some(
                    flotilla_proto::api::PersistentVolumeClaimVolumeSource {
                        claim_name: c.to_string(),
                        read_only: false,
                    },
                ),
                ..Default::default()
            });
        }
        p
    }

    #[test]
    fn claims_pin_pods_to_their_node() {
        let nodes = [
            node("a", "4", "4Gi", "amd64"),
            node("b", "4", "4Gi", "amd64"),
        ];
        // a already runs a sibling, so spreading alone would pick b; the claim wins.
        let existing = [pod("web-1", "10m", "1Mi", None, "web", Some("a"))];
        let p = with_claims(
            pod("web-0", "10m", "1Mi", None, "web", None),
            &["data-web-0"],
        );
        let pinned = [claim("data-web-0", Some("a"), "ReadWriteOnce")];
        assert_eq!(
            place_with_claims(&p, &nodes, &existing, &pinned),
            Ok("a".into())
        );
        // A claim without a node leaves the choice to the usual rules.
        let fresh = [claim("data-web-0", None, "ReadWriteOnce")];
        assert_eq!(
            place_with_claims(&p, &nodes, &existing, &fresh),
            Ok("b".into())
        );
        // The claim's node cordoned: the pod waits, and says why for every node.
        let mut cordoned = nodes.clone();
        cordoned[0].spec.unschedulable = true;
        assert_eq!(
            place_with_claims(&p, &cordoned, &existing, &pinned),
            Err("0/2 nodes are available: 1 node(s) had volume node affinity conflict, 1 node(s) were unschedulable.".into())
        );
        // The claim's node gone from the cluster.
        assert_eq!(
            place_with_claims(&p, &nodes[1..], &[], &pinned),
            Err("0/1 nodes are available: 1 node(s) had volume node affinity conflict.".into())
        );
        // Two claims on two nodes: nowhere.
        let two = with_claims(
            pod("x", "10m", "1Mi", None, "o", None),
            &["data-web-0", "other"],
        );
        let split = [
            pinned[0].clone(),
            claim("other", Some("b"), "ReadWriteOnce"),
        ];
        assert_eq!(
            place_with_claims(&two, &nodes, &[], &split),
            Err("0/2 nodes are available: 2 node(s) had volume node affinity conflict.".into())
        );
    }

    #[test]
    fn missing_and_single_pod_claims_keep_pods_pending() {
        let nodes = [node("a", "4", "4Gi", "amd64")];
        let p = with_claims(
            pod("web-0", "10m", "1Mi", None, "web", None),
            &["data-web-0"],
        );
        assert_eq!(
            place_with_claims(&p, &nodes, &[], &[]),
            Err("0/1 nodes are available: persistentvolumeclaim \"data-web-0\" not found.".into())
        );
        let once = [claim("data-web-0", Some("a"), "ReadWriteOncePod")];
        let mut user = with_claims(
            pod("other", "10m", "1Mi", None, "o", Some("a")),
            &["data-web-0"],
        );
        user.spec.node_name = Some("a".into());
        assert_eq!(
            place_with_claims(&p, &nodes, std::slice::from_ref(&user), &once),
            Err("0/1 nodes are available: persistentvolumeclaim \"data-web-0\" has access mode ReadWriteOncePod and pod \"other\" uses it.".into())
        );
        assert_eq!(place_with_claims(&p, &nodes, &[], &once), Ok("a".into()));
        // ReadWriteOnce: pods on the claim's node share it.
        let shared = [claim("data-web-0", Some("a"), "ReadWriteOnce")];
        assert_eq!(
            place_with_claims(&p, &nodes, &[user], &shared),
            Ok("a".into())
        );
    }

    #[test]
    fn scheduling_records_events_and_failures_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), &[7u8; 32]).unwrap();
        store
            .write(|tx| {
                tx.put(Object::Node(node("a", "1", "1Gi", "amd64")))?;
                tx.put(Object::Pod(pod("fits", "100m", "1Mi", None, "web", None)))?;
                tx.put(Object::Pod(pod("huge", "8", "1Mi", None, "web", None)))
            })
            .unwrap();
        for _ in 0..3 {
            store.write(pass).unwrap();
        }
        let mut events: Vec<(String, String, String, i32)> = store
            .list(Kind::Event, None)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|o| match o {
                Object::Event(e) => Some((e.involved_object.name, e.reason, e.message, e.count)),
                _ => None,
            })
            .collect();
        events.sort();
        expect_test::expect![[r#"
            [
                (
                    "fits",
                    "Scheduled",
                    "Successfully assigned default/fits to a",
                    1,
                ),
                (
                    "huge",
                    "FailedScheduling",
                    "0/1 nodes are available: 1 Insufficient cpu.",
                    1,
                ),
            ]
        "#]]
        .assert_debug_eq(&events);
    }

    #[test]
    fn binding_a_pod_binds_its_claims_in_the_same_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), &[7u8; 32]).unwrap();
        let mut b = node("b", "4", "4Gi", "amd64");
        b.metadata.labels.clear();
        let mut fresh = claim("data-web-0", None, "ReadWriteOnce");
        fresh
            .spec
            .resources
            .requests
            .insert("storage".into(), Quantity("1Gi".into()));
        let p = with_claims(
            pod("web-0", "10m", "1Mi", None, "web", None),
            &["data-web-0"],
        );
        let q = with_claims(
            pod("web-x", "10m", "1Mi", None, "web", None),
            &["data-web-0"],
        );
        store
            .write(|tx| {
                tx.put(Object::Node(node("a", "4", "4Gi", "amd64")))?;
                tx.put(Object::Node(b))?;
                tx.put(Object::PersistentVolumeClaim(fresh))?;
                tx.put(Object::Pod(p))?;
                tx.put(Object::Pod(q))
            })
            .unwrap();
        store.write(pass).unwrap();
        let get = |kind, name: &str| store.get(&ObjectKeyOf::new(kind, "default", name)).unwrap();
        let Some(Object::PersistentVolumeClaim(c)) = get(Kind::PersistentVolumeClaim, "data-web-0")
        else {
            panic!("claim gone")
        };
        let node_of = |name: &str| match get(Kind::Pod, name) {
            Some(Object::Pod(p)) => p.spec.node_name,
            _ => None,
        };
        let on = node_of("web-0").expect("web-0 scheduled");
        assert_eq!(c.selected_node(), Some(on.as_str()));
        assert_eq!(c.status.phase, "Bound");
        assert_eq!(c.spec.volume_name, Some(format!("pvc-{}", c.metadata.uid)));
        assert_eq!(c.status.capacity["storage"], Quantity("1Gi".into()));
        // The second pod of the same claim followed it within the same pass, although
        // spreading would have sent it to the other node.
        assert_eq!(node_of("web-x"), Some(on));
    }

    #[test]
    fn spreads_replicas_of_one_owner() {
        let nodes = [
            node("a", "4", "4Gi", "amd64"),
            node("b", "4", "4Gi", "amd64"),
            node("c", "4", "4Gi", "amd64"),
        ];
        let existing = [
            pod("w1", "100m", "64Mi", None, "web", Some("a")),
            pod("w2", "100m", "64Mi", None, "web", Some("b")),
        ];
        assert_eq!(
            place(
                &pod("w3", "100m", "64Mi", None, "web", None),
                &nodes,
                &existing
            ),
            Ok("c".into())
        );
    }

    #[test]
    fn explains_why_nothing_fits() {
        let nodes = [
            node("a", "1", "128Mi", "amd64"),
            node("b", "4", "4Gi", "arm64"),
            node("c", "4", "4Gi", "amd64"),
        ];
        let existing = [pod("x", "10m", "1Mi", Some(8080), "other", Some("c"))];
        let mut p = pod("p", "100m", "256Mi", Some(8080), "web", None);
        p.spec
            .node_selector
            .insert("kubernetes.io/arch".into(), "amd64".into());
        assert_eq!(
            place(&p, &nodes, &existing),
            Err("0/3 nodes are available: 1 Insufficient memory, 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) didn't match Pod's node affinity/selector.".into())
        );
        let mut not_ready = node("d", "4", "4Gi", "amd64");
        not_ready.status.conditions[0].status = "Unknown".into();
        assert!(place(&pod("q", "1", "1Mi", None, "o", None), &[not_ready], &[]).is_err());
    }

    fn labelled(mut n: Node, key: &str, value: &str) -> Node {
        n.metadata.labels.insert(key.into(), value.into());
        n
    }

    fn app(mut p: Pod, app: &str) -> Pod {
        p.metadata.labels.insert("app".into(), app.into());
        p
    }

    fn selector(app: &str) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: [("app".to_string(), app.to_string())].into(),
            ..Default::default()
        })
    }

    #[test]
    fn taints_repel_unless_tolerated_and_cordon_blocks() {
        let mut a = node("a", "4", "4Gi", "amd64");
        a.spec.taints.push(Taint {
            key: "dedicated".into(),
            value: "edge".into(),
            effect: NO_SCHEDULE.into(),
            time_added: None,
        });
        let mut b = node("b", "4", "4Gi", "amd64");
        b.spec.unschedulable = true;
        let nodes = [a, b];
        let mut p = pod("p", "10m", "1Mi", None, "o", None);
        assert_eq!(
            place(&p, &nodes, &[]),
            Err("0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: edge}, 1 node(s) were unschedulable.".into())
        );
        p.spec.tolerations.push(Toleration {
            key: "dedicated".into(),
            operator: Some("Exists".into()),
            ..Default::default()
        });
        assert_eq!(place(&p, &nodes, &[]), Ok("a".into()));
    }

    #[test]
    fn prefer_no_schedule_is_a_last_resort() {
        let mut a = node("a", "4", "4Gi", "amd64");
        a.spec.taints.push(Taint {
            key: "spot".into(),
            effect: PREFER_NO_SCHEDULE.into(),
            ..Default::default()
        });
        let b = node("b", "4", "4Gi", "amd64");
        // b is busier and holds a sibling, yet the soft taint on a still wins.
        let existing = [pod("w1", "1", "2Gi", None, "web", Some("b"))];
        let p = pod("w2", "10m", "1Mi", None, "web", None);
        assert_eq!(place(&p, &[a.clone(), b], &existing), Ok("b".into()));
        assert_eq!(place(&p, &[a], &[]), Ok("a".into()));
    }

    #[test]
    fn anti_affinity_by_hostname_and_its_symmetry() {
        let nodes: Vec<Node> = ["a", "b"]
            .iter()
            .map(|n| labelled(node(n, "4", "4Gi", "amd64"), "kubernetes.io/hostname", n))
            .collect();
        let term = PodAffinityTerm {
            label_selector: selector("db"),
            namespaces: vec![],
            topology_key: "kubernetes.io/hostname".into(),
        };
        let mut db = app(pod("db", "10m", "1Mi", None, "db", None), "db");
        db.spec.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: vec![term],
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut on_a = db.clone();
        on_a.spec.node_name = Some("a".into());
        assert_eq!(
            place(&db, &nodes, std::slice::from_ref(&on_a)),
            Ok("b".into())
        );
        let mut on_b = db.clone();
        on_b.spec.node_name = Some("b".into());
        assert_eq!(
            place(&db, &nodes, &[on_a.clone(), on_b]),
            Err("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.".into())
        );
        // An existing pod's anti-affinity also keeps matching newcomers away.
        let plain = app(pod("x", "10m", "1Mi", None, "other", None), "db");
        let mut only_a = nodes.clone();
        only_a.truncate(1);
        assert_eq!(
            place(&plain, &only_a, &[on_a]),
            Err("0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.".into())
        );
    }

    #[test]
    fn pod_affinity_follows_its_peer_but_the_first_may_go_anywhere() {
        let nodes: Vec<Node> = [("a", "z1"), ("b", "z2")]
            .iter()
            .map(|(n, z)| labelled(node(n, "4", "4Gi", "amd64"), "zone", z))
            .collect();
        let mut web = app(pod("web", "10m", "1Mi", None, "web", None), "web");
        web.spec.affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm {
                    label_selector: selector("web"),
                    namespaces: vec![],
                    topology_key: "zone".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(place(&web, &nodes, &[]).is_ok());
        let mut peer = web.clone();
        peer.spec.node_name = Some("b".into());
        assert_eq!(place(&web, &nodes, &[peer]), Ok("b".into()));
    }

    #[test]
    fn topology_spread_keeps_skew_within_bounds() {
        let nodes: Vec<Node> = [("a", "z1"), ("b", "z1"), ("c", "z2")]
            .iter()
            .map(|(n, z)| labelled(node(n, "4", "4Gi", "amd64"), "zone", z))
            .collect();
        let mut p = app(pod("w", "10m", "1Mi", None, "w-owner", None), "w");
        p.spec
            .topology_spread_constraints
            .push(TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: selector("w"),
            });
        let bound = |name: &str, on: &str| {
            let mut b = app(pod(name, "10m", "1Mi", None, "other", None), "w");
            b.spec.node_name = Some(on.into());
            b
        };
        // z1 has one, z2 none: only z2 keeps the skew at 1.
        assert_eq!(place(&p, &nodes, &[bound("1", "a")]), Ok("c".into()));
        // z1 has two, z2 one: z1 would make skew 2.
        let existing = [bound("1", "a"), bound("2", "b"), bound("3", "c")];
        assert_eq!(place(&p, &nodes, &existing), Ok("c".into()));
        let mut no_zone = nodes.clone();
        no_zone.push(node("d", "4", "4Gi", "amd64"));
        p.spec.topology_spread_constraints[0].max_skew = 5;
        let err = place(&p, &no_zone[3..], &[]).unwrap_err();
        assert!(
            err.contains("didn't match pod topology spread constraints"),
            "{err}"
        );
    }

    #[test]
    fn preferred_node_affinity_wins_over_spreading() {
        let nodes = [
            labelled(node("a", "4", "4Gi", "amd64"), "disk", "ssd"),
            node("b", "4", "4Gi", "amd64"),
        ];
        let mut p = pod("w2", "10m", "1Mi", None, "web", None);
        p.spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: vec![
                    PreferredSchedulingTerm {
                        weight: 10,
                        preference: NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: "disk".into(),
                                operator: "In".into(),
                                values: vec!["ssd".into()],
                            }],
                            match_fields: vec![],
                        },
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        });
        let existing = [pod("w1", "10m", "1Mi", None, "web", Some("a"))];
        assert_eq!(place(&p, &nodes, &existing), Ok("a".into()));
    }
}
