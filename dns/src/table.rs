//! The immutable lookup table: every record the cluster domain and its reverse names hold,
//! prebuilt from a list of services, and the pure `lookup(name, type)` over it.
//!
//! Why a prebuilt `HashMap<Name, Node>` rather than hickory's `InMemoryZoneHandler`: a query is
//! one case-insensitive hash lookup (hickory's `Name` hashes and compares ignoring ASCII case)
//! plus borrowing ready-made `Record`s, with no per-query locking, no `RrKey` building and no
//! zone-handler chain; the table is rebuilt on `update` (services change seldom, queries come
//! thousands a second) and swapped in atomically, so readers never wait for a writer. The same
//! table also answers reverse (PTR) names for cluster addresses, which would otherwise need one
//! hickory zone per /24 or a catch-all that could not forward the rest.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Label, Name, RData, Record, RecordType};
use tracing::warn;

use crate::model::{Endpoint, Port, Service, ServiceKind};

/// The schema version of the Kubernetes DNS specification these records follow.
const SCHEMA_VERSION: &str = "1.1.0";
/// CNAME chains inside the zone are followed at most this far (loops end here too).
const MAX_CNAME_CHAIN: usize = 8;

/// All records, by owner name. A node with no record sets is a name that exists without data
/// (an empty non-terminal such as `ns.svc.D` or `_tcp.web.ns.svc.D`).
#[derive(Debug)]
pub(crate) struct Table {
    origin: Name,
    pod_zone: Name,
    ttl: u32,
    soa: Record,
    nodes: HashMap<Name, Node>,
}

#[derive(Debug, Default)]
struct Node {
    rrsets: Vec<RrSet>,
}

#[derive(Debug)]
struct RrSet {
    rtype: RecordType,
    records: Vec<Record>,
    /// Glue for SRV: the A/AAAA records of the targets.
    additionals: Vec<Record>,
}

impl Node {
    fn rrset(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|s| s.rtype == rtype)
    }
}

/// What the table says about a question.
#[derive(Debug)]
pub(crate) enum Outcome<'a> {
    /// The name is ours (inside the domain, or a reverse name of a cluster address).
    Authoritative(Answer<'a>),
    /// The name is not ours: forward it.
    Forward,
}

/// An authoritative answer. Empty `answers` means NODATA (or NXDOMAIN) and wants the SOA.
#[derive(Debug, Default)]
pub(crate) struct Answer<'a> {
    pub(crate) nxdomain: bool,
    /// A record made up for this question (the deprecated `a-b-c-d.ns.pod.D` form).
    pub(crate) synthesized: Option<Box<Record>>,
    pub(crate) answers: Vec<&'a Record>,
    pub(crate) additionals: Vec<&'a Record>,
    /// The chain ended in a CNAME to a name outside the zone; the server may resolve it.
    pub(crate) chase: Option<Name>,
}

impl Answer<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.synthesized.is_none()
    }
}

impl Table {
    /// Builds the table for `origin` (lowercase, fully qualified) from `services`. Services
    /// whose names are not valid DNS labels are skipped with a warning, never half-added.
    pub(crate) fn build(origin: &Name, ttl: u32, serial: u32, services: &[Service]) -> Self {
        let origin = origin.to_lowercase();
        let soa = soa_record(&origin, ttl, serial);
        let pod_zone = child(&origin, &["pod"]).unwrap_or_else(|| origin.clone());
        let mut b = Builder {
            origin: origin.clone(),
            ttl,
            nodes: HashMap::new(),
        };
        b.add(soa.clone());
        b.ensure(&pod_zone);
        if let Some(version) = child(&origin, &["dns-version"]) {
            b.add(Record::from_rdata(
                version,
                ttl,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
            ));
        }
        if let Some(svc) = child(&origin, &["svc"]) {
            b.ensure(&svc);
        }
        for service in services {
            if let Err(reason) = b.add_service(service) {
                warn!(
                    service.namespace = %service.namespace,
                    service.name = %service.name,
                    %reason,
                    "service left out of dns"
                );
            }
        }
        b.finish();
        Table {
            origin,
            pod_zone,
            ttl,
            soa,
            nodes: b.nodes,
        }
    }

    /// The cluster domain, fully qualified.
    pub(crate) fn origin(&self) -> &Name {
        &self.origin
    }

    /// Whether `name` is inside the cluster domain.
    pub(crate) fn in_zone(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    /// The zone's SOA, for the authority section of negative answers.
    pub(crate) fn soa(&self) -> &Record {
        &self.soa
    }

    /// Answers `qtype` for `qname` from the table alone.
    pub(crate) fn lookup(&self, qname: &Name, qtype: RecordType) -> Outcome<'_> {
        let in_zone = self.in_zone(qname);
        let Some(node) = self.nodes.get(qname) else {
            if !in_zone {
                return Outcome::Forward;
            }
            return Outcome::Authoritative(self.synthesize(qname, qtype));
        };
        let mut answer = Answer::default();
        if qtype == RecordType::ANY {
            answer.answers = node.rrsets.iter().flat_map(|s| &s.records).collect();
            return Outcome::Authoritative(answer);
        }
        let mut node = node;
        for _ in 0..MAX_CNAME_CHAIN {
            if let Some(set) = node.rrset(qtype) {
                answer.answers.extend(&set.records);
                answer.additionals.extend(&set.additionals);
                break;
            }
            let Some(cname) = node.rrset(RecordType::CNAME) else {
                break;
            };
            answer.answers.extend(&cname.records);
            let Some(RData::CNAME(CNAME(target))) = cname.records.first().map(|r| &r.data) else {
                break;
            };
            match self.nodes.get(target) {
                Some(next) => node = next,
                None => {
                    if !self.origin.zone_of(target) {
                        answer.chase = Some(target.clone());
                    }
                    break;
                }
            }
        }
        Outcome::Authoritative(answer)
    }

    /// Names inside the zone that are not in the table: the deprecated pod records
    /// `a-b-c-d.ns.pod.D` (any address, as kube-dns did), otherwise NXDOMAIN.
    fn synthesize(&self, qname: &Name, qtype: RecordType) -> Answer<'_> {
        let mut answer = Answer::default();
        if !self.pod_zone.zone_of(qname) {
            answer.nxdomain = true;
            return answer;
        }
        let depth = qname.num_labels() - self.pod_zone.num_labels();
        // `ns.pod.D` exists as soon as any address below it could.
        if depth == 1 {
            return answer;
        }
        let ip = match qname.iter().next() {
            Some(label) if depth == 2 => ip_from_dashed(label),
            _ => None,
        };
        match ip {
            None => answer.nxdomain = true,
            Some(ip) => {
                let data = match ip {
                    IpAddr::V4(v4) if qtype == RecordType::A || qtype == RecordType::ANY => {
                        Some(RData::A(A(v4)))
                    }
                    IpAddr::V6(v6) if qtype == RecordType::AAAA || qtype == RecordType::ANY => {
                        Some(RData::AAAA(AAAA(v6)))
                    }
                    _ => None,
                };
                answer.synthesized =
                    data.map(|d| Box::new(Record::from_rdata(qname.to_lowercase(), self.ttl, d)));
            }
        }
        answer
    }
}

struct Builder {
    origin: Name,
    ttl: u32,
    nodes: HashMap<Name, Node>,
}

impl Builder {
    /// Makes `name` exist, and inside the zone every name between it and the origin.
    fn ensure(&mut self, name: &Name) -> &mut Node {
        if self.origin.zone_of(name) {
            let mut parent = name.base_name();
            while parent.num_labels() > self.origin.num_labels() {
                self.nodes.entry(parent.clone()).or_default();
                parent = parent.base_name();
            }
        }
        self.nodes.entry(name.clone()).or_default()
    }

    fn add(&mut self, record: Record) {
        let name = record.name.clone();
        let rtype = record.record_type();
        let node = self.ensure(&name);
        match node.rrsets.iter_mut().find(|s| s.rtype == rtype) {
            Some(set) => {
                if !set.records.contains(&record) {
                    set.records.push(record);
                }
            }
            None => node.rrsets.push(RrSet {
                rtype,
                records: vec![record],
                additionals: Vec::new(),
            }),
        }
    }

    fn add_address(&mut self, name: &Name, ip: IpAddr) {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add(Record::from_rdata(name.clone(), self.ttl, data));
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Name) {
        let mut owner = Name::from(ip);
        owner.set_fqdn(true);
        self.add(Record::from_rdata(
            owner,
            self.ttl,
            RData::PTR(PTR(target.clone())),
        ));
    }

    /// SRV at `_port._proto.service`, weight filled in by `finish`.
    fn add_srv(&mut self, service: &Name, port: &Port, target: &Name) -> Result<(), String> {
        if port.name.is_empty() {
            return Ok(());
        }
        let owner = child(
            service,
            &[&format!("_{}", port.name), port.protocol.srv_label()],
        )
        .ok_or_else(|| format!("port name {:?} is not a valid dns label", port.name))?;
        self.add(Record::from_rdata(
            owner,
            self.ttl,
            RData::SRV(SRV::new(0, 100, port.port, target.clone())),
        ));
        Ok(())
    }

    fn add_service(&mut self, s: &Service) -> Result<(), String> {
        let namespace = child(&self.origin, &[&s.namespace, "svc"])
            .ok_or_else(|| format!("namespace {:?} is not a valid dns label", s.namespace))?;
        let name = child(&namespace, &[&s.name])
            .ok_or_else(|| format!("name {:?} is not a valid dns label", s.name))?;
        // Check everything that can fail before adding anything.
        for port in s
            .ports
            .iter()
            .chain(s.endpoints.iter().flat_map(|e| &e.ports))
        {
            if !port.name.is_empty() && child(&name, &[&format!("_{}", port.name)]).is_none() {
                return Err(format!(
                    "port name {:?} is not a valid dns label",
                    port.name
                ));
            }
        }
        let endpoint_names = s
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| endpoint_names(&name, e))
            .collect::<Result<Vec<_>, _>>()?;
        let external = match &s.kind {
            ServiceKind::ExternalName(target) => Some(
                Name::from_ascii(target)
                    .map(|mut n| {
                        n.set_fqdn(true);
                        n.to_lowercase()
                    })
                    .map_err(|e| format!("external name {target:?}: {e}"))?,
            ),
            _ => None,
        };

        self.ensure(&namespace);
        match &s.kind {
            ServiceKind::ClusterIp(ips) => {
                self.ensure(&name);
                for ip in ips {
                    self.add_address(&name, *ip);
                    self.add_ptr(*ip, &name);
                }
                for port in &s.ports {
                    self.add_srv(&name, port, &name)?;
                }
            }
            ServiceKind::Headless => {
                // No ready endpoint: the service name does not exist (NXDOMAIN, as the spec says).
                for (endpoint, names) in s.endpoints.iter().filter(|e| e.ready).zip(endpoint_names)
                {
                    for (ip, host) in endpoint.addresses.iter().zip(&names) {
                        self.add_address(&name, *ip);
                        self.add_address(host, *ip);
                        self.add_ptr(*ip, host);
                    }
                    let ports = if endpoint.ports.is_empty() {
                        &s.ports
                    } else {
                        &endpoint.ports
                    };
                    for port in ports {
                        for host in &names {
                            self.add_srv(&name, port, host)?;
                        }
                    }
                }
            }
            ServiceKind::ExternalName(_) => {
                if let Some(target) = external {
                    self.add(Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(target)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// SRV weights (100 split evenly, as CoreDNS) and the targets' addresses as glue.
    fn finish(&mut self) {
        let mut glue: Vec<(Name, Vec<Record>)> = Vec::new();
        for (owner, node) in &self.nodes {
            let Some(set) = node.rrset(RecordType::SRV) else {
                continue;
            };
            let mut extra = Vec::new();
            for record in &set.records {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let Some(target) = self.nodes.get(&srv.target) else {
                    continue;
                };
                for rtype in [RecordType::A, RecordType::AAAA] {
                    for r in target
                        .rrset(rtype)
                        .map(|s| &s.records[..])
                        .unwrap_or_default()
                    {
                        if !extra.contains(r) {
                            extra.push(r.clone());
                        }
                    }
                }
            }
            glue.push((owner.clone(), extra));
        }
        for (owner, extra) in glue {
            let Some(set) = self
                .nodes
                .get_mut(&owner)
                .and_then(|n| n.rrsets.iter_mut().find(|s| s.rtype == RecordType::SRV))
            else {
                continue;
            };
            let weight = u16::try_from((100 / set.records.len()).max(1)).unwrap_or(1);
            for record in &mut set.records {
                if let RData::SRV(srv) = &mut record.data {
                    srv.weight = weight;
                }
            }
            set.additionals = extra;
        }
    }
}

/// `labels` (leftmost first) prepended to `parent`, each a valid single DNS label, lowercased.
fn child(parent: &Name, labels: &[&str]) -> Option<Name> {
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        if label.contains('.') {
            return None;
        }
        out.push(Label::from_ascii(label).ok()?.to_lowercase());
    }
    let mut name = Name::from_labels(out).ok()?.append_name(parent).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// The names of a ready endpoint's addresses, one per address: all the same with a hostname,
/// else the dashed address (`10-1-2-3`, `fd00--1`).
fn endpoint_names(service: &Name, e: &Endpoint) -> Result<Vec<Name>, String> {
    if let Some(hostname) = &e.hostname {
        let name = child(service, &[hostname])
            .ok_or_else(|| format!("endpoint hostname {hostname:?} is not a valid dns label"))?;
        return Ok(vec![name; e.addresses.len()]);
    }
    e.addresses
        .iter()
        .map(|ip| {
            let label = dashed(*ip);
            child(service, &[&label]).ok_or_else(|| format!("address label {label:?} is invalid"))
        })
        .collect()
}

/// `10.1.2.3` → `10-1-2-3`, `fd00::1` → `fd00--1`, `::1` → `0--1` (a label cannot start with `-`).
pub(crate) fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let s = v6.to_string().replace(':', "-");
            if s.starts_with('-') {
                format!("0{s}")
            } else {
                s
            }
        }
    }
}

fn ip_from_dashed(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    if let Ok(v4) = text.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    text.replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn soa_record(origin: &Name, ttl: u32, serial: u32) -> Record {
    let mname = child(origin, &["ns", "dns"]).unwrap_or_else(|| origin.clone());
    let rname = child(origin, &["hostmaster"]).unwrap_or_else(|| origin.clone());
    // Refresh, retry and expire as CoreDNS; the minimum (negative TTL) is the record TTL.
    Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl)),
    )
}

#[cfg(test)]
pub(crate) mod tests;
