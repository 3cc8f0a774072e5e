//! The one place that decides the response to a query, for UDP and TCP alike (EDNS and its
//! version, the request checks, the table's answer or the upstreams', the SOA of empty answers),
//! and that encodes it for UDP, truncated to the client's payload size with TC set.
//!
//! Deciding is synchronous: only a `Pending` reply (a forwarded name, or an ExternalName chased
//! outside the zone) needs the network, so the UDP loop answers everything else without leaving
//! its thread, and hands just those to a task.

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::zone_handler::{
    MessageRequest, MessageResponse, MessageResponseBuilder, Queries,
};
use tracing::debug;

use crate::forward::{Forwarded, Forwarder};
use crate::table::{Answer, Outcome, Table};

/// Without EDNS a UDP response is limited to 512 bytes (RFC 1035 section 4.2.1).
const UDP_PLAIN_MAX: u16 = 512;

/// The current table and the upstreams: everything a response is made from.
pub(crate) struct Responder {
    pub(crate) table: ArcSwap<Table>,
    forwarder: Option<Forwarder>,
}

/// A response, ready to encode: it borrows the table's records and owns the upstreams'.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    metadata: Metadata,
    edns: Option<Edns>,
    answer: Answer<'a>,
    soa: Option<&'a Record>,
    upstream: Forwarded,
}

/// What `Responder::decide` found.
pub(crate) enum Decision<'a> {
    Reply(Reply<'a>),
    /// The reply needs the upstream resolvers first.
    Pending(Pending<'a>),
}

/// A reply waiting for the upstreams to resolve `name`.
pub(crate) struct Pending<'a> {
    reply: Reply<'a>,
    forwarder: &'a Forwarder,
    name: Name,
    qtype: RecordType,
    /// `name` is the out-of-zone target of our CNAME: its records join our answer. Otherwise the
    /// whole question was forwarded and the upstream's answer, rcode included, is the reply.
    chase: bool,
}

impl Responder {
    pub(crate) fn new(table: Table, forwarder: Option<Forwarder>) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            forwarder,
        }
    }

    /// Decides the response to `request` from `table`, without waiting for anything.
    pub(crate) fn decide<'a>(&'a self, request: &MessageRequest, table: &'a Table) -> Decision<'a> {
        let mut reply = Reply::error(&request.metadata, ResponseCode::NoError);
        // EDNS: answer with our own OPT so that the client's UDP size applies (else 512).
        reply.edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(UDP_PLAIN_MAX));
            edns.set_version(0);
            edns
        });
        let query = match request.queries.queries() {
            _ if request.edns.as_ref().is_some_and(|e| e.version() > 0) => {
                return reply.refused(ResponseCode::BADVERS);
            }
            _ if request.metadata.op_code != OpCode::Query => {
                return reply.refused(ResponseCode::NotImp);
            }
            [query] => query,
            _ => return reply.refused(ResponseCode::FormErr),
        };
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return reply.refused(ResponseCode::Refused);
        }
        let qname: &Name = query.name();
        reply.metadata.recursion_available = self.forwarder.is_some();
        match (table.lookup(qname, qtype), &self.forwarder) {
            (Outcome::Authoritative(answer), forwarder) => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = if answer.nxdomain {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                reply.soa = answer.is_empty().then(|| table.soa());
                let chase = answer.chase.clone();
                reply.answer = answer;
                match (chase, forwarder) {
                    (Some(target), Some(forwarder)) => Decision::Pending(Pending {
                        reply,
                        forwarder,
                        name: target,
                        qtype,
                        chase: true,
                    }),
                    _ => Decision::Reply(reply),
                }
            }
            (Outcome::Forward, None) => reply.refused(ResponseCode::Refused),
            (Outcome::Forward, Some(forwarder)) => Decision::Pending(Pending {
                reply,
                forwarder,
                name: qname.clone(),
                qtype,
                chase: false,
            }),
        }
    }

    /// Decides the response to `request` and, if it needs the upstreams, waits for them.
    pub(crate) async fn respond<'a>(
        &'a self,
        request: &MessageRequest,
        table: &'a Table,
    ) -> Reply<'a> {
        match self.decide(request, table) {
            Decision::Reply(reply) => reply,
            Decision::Pending(pending) => pending.resolve().await,
        }
    }
}

impl<'a> Pending<'a> {
    pub(crate) async fn resolve(self) -> Reply<'a> {
        let Pending {
            mut reply,
            forwarder,
            name,
            qtype,
            chase,
        } = self;
        let upstream = forwarder.resolve(name, qtype).await;
        if chase {
            reply.upstream.answers = upstream.answers;
        } else {
            reply.metadata.response_code = upstream.rcode;
            reply.upstream = upstream;
        }
        reply
    }
}

impl<'a> Reply<'a> {
    /// A response with no records and `rcode`, and no EDNS (the FORMERR for a request whose
    /// header is all that could be read, before EDNS is known).
    pub(crate) fn error(request: &Metadata, rcode: ResponseCode) -> Self {
        let mut metadata = Metadata::response_from_request(request);
        metadata.response_code = rcode;
        Reply {
            metadata,
            edns: None,
            answer: Answer::default(),
            soa: None,
            upstream: Forwarded {
                rcode,
                answers: Vec::new(),
                authorities: Vec::new(),
            },
        }
    }

    fn refused(mut self, rcode: ResponseCode) -> Decision<'a> {
        self.metadata.response_code = rcode;
        Decision::Reply(self)
    }

    /// The response as hickory-server sends it (on TCP), with the request's question.
    pub(crate) fn message<'s>(
        &'s self,
        queries: &'s Queries,
    ) -> MessageResponse<
        's,
        's,
        impl Iterator<Item = &'s Record> + Send + 's,
        impl Iterator<Item = &'s Record> + Send + 's,
        impl Iterator<Item = &'s Record> + Send + 's,
        impl Iterator<Item = &'s Record> + Send + 's,
    > {
        let answers = self
            .answer
            .synthesized
            .iter()
            .map(|r| &**r)
            .chain(self.answer.answers.iter().copied())
            .chain(self.upstream.answers.iter());
        MessageResponseBuilder::new(queries, self.edns.as_ref()).build(
            self.metadata,
            answers,
            self.upstream.authorities.iter(),
            self.soa,
            self.answer.additionals.iter().copied(),
        )
    }

    /// Encodes the response for UDP into `buf` (cleared first): at most the client's EDNS
    /// payload size, or 512 bytes without EDNS; records that do not fit are left out and TC is
    /// set. A response that cannot be encoded at all becomes a bare SERVFAIL, as hickory does.
    pub(crate) fn encode_udp(&self, queries: &Queries, buf: &mut Vec<u8>) {
        let max = self.edns.as_ref().map_or(UDP_PLAIN_MAX, Edns::max_payload);
        buf.clear();
        let mut encoder = BinEncoder::new(buf);
        encoder.set_max_size(max);
        let Err(error) = self.message(queries).destructive_emit(&mut encoder) else {
            return;
        };
        debug!(%error, dns.id = self.metadata.id, "failed to encode dns response");
        buf.clear();
        let mut metadata = Metadata::new(self.metadata.id, MessageType::Response, OpCode::Query);
        metadata.response_code = ResponseCode::ServFail;
        let header = Header {
            metadata,
            counts: HeaderCounts::default(),
        };
        // Twelve bytes always fit.
        let _ = header.emit(&mut BinEncoder::new(buf));
    }
}

#[cfg(test)]
mod tests;
