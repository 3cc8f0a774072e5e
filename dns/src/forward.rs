//! Forwarding of names outside the cluster to the node's upstream resolvers, through
//! hickory-resolver, whose cache honours the upstream TTLs (counting them down) and caches
//! negative answers for the SOA minimum.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use tracing::debug;

use crate::Error;

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries in the answer cache.
const CACHE_SIZE: u64 = 8192;

pub(crate) struct Forwarder {
    resolver: TokioResolver,
}

/// An upstream's answer, ready to copy into our response.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
}

impl Forwarder {
    pub(crate) fn new(upstreams: &[SocketAddr]) -> Result<Self, Error> {
        let servers = upstreams
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut opts = ResolverOpts::default();
        opts.timeout = UPSTREAM_TIMEOUT;
        opts.attempts = 1;
        opts.cache_size = CACHE_SIZE;
        opts.use_hosts_file = ResolveHosts::Never;
        // A forwarder passes CNAME chains on as they came.
        opts.preserve_intermediates = true;
        opts.ndots = 0;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| Error::Forwarder {
                upstreams: upstreams.to_vec(),
                reason: e.to_string(),
            })?;
        Ok(Self { resolver })
    }

    /// Resolves `name` (fully qualified) upstream, or from the cache.
    pub(crate) async fn resolve(&self, name: Name, rtype: RecordType) -> Forwarded {
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => Forwarded {
                rcode: ResponseCode::NoError,
                answers: lookup.answers().to_vec(),
                authorities: Vec::new(),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => Forwarded {
                rcode: no_records.response_code,
                answers: Vec::new(),
                authorities: no_records
                    .soa
                    .map(|soa| vec![soa.into_record_of_rdata()])
                    .unwrap_or_default(),
            },
            Err(NetError::Dns(DnsError::ResponseCode(rcode))) => Forwarded {
                rcode,
                answers: Vec::new(),
                authorities: Vec::new(),
            },
            Err(error) => {
                debug!(%error, dns.name = %name, dns.rtype = %rtype, "forwarding failed");
                Forwarded {
                    rcode: ResponseCode::ServFail,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                }
            }
        }
    }
}
