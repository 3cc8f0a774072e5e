//! The decision and the UDP encoding, on requests built as a client would send them.

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use super::{Decision, Responder};
use crate::model::{Endpoint, Service, ServiceKind};
use crate::table::Table;

fn service(name: &str, kind: ServiceKind, endpoints: Vec<Endpoint>) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        kind,
        ports: vec![],
        endpoints,
    }
}

/// `web` with one ClusterIP, and the headless `many` with 60 ready endpoints.
fn responder() -> Responder {
    let origin = Name::from_ascii("cluster.local.").unwrap();
    let ready = |i| Endpoint {
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 2, 0, i))],
        hostname: None,
        ready: true,
        ports: vec![],
    };
    let services = [
        service(
            "web",
            ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]),
            vec![],
        ),
        service("many", ServiceKind::Headless, (1..=60).map(ready).collect()),
    ];
    Responder::new(Table::build(&origin, 5, 1, &services), None)
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

/// Decides `message` and returns the UDP response as the client would decode it.
fn udp(responder: &Responder, message: &Message) -> Message {
    let request = Request::from_bytes(
        message.to_vec().unwrap(),
        "127.0.0.1:5353".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    let table = responder.table.load();
    let Decision::Reply(reply) = responder.decide(&request, &table) else {
        panic!("no upstreams, yet the reply is pending");
    };
    let mut out = Vec::new();
    reply.encode_udp(&request.queries, &mut out);
    Message::from_vec(&out).unwrap()
}

#[test]
fn answers_from_the_table_with_the_request_id() {
    let r = udp(
        &responder(),
        &query("web.default.svc.cluster.local.", RecordType::A),
    );
    assert_eq!(r.metadata.id, 0x1234);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert!(!r.metadata.recursion_available);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.queries.len(), 1);
}

#[test]
fn requests_that_are_not_answered_get_their_rcode() {
    let responder = responder();
    let name = "web.default.svc.cluster.local.";
    let mut badvers = query(name, RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    badvers.set_edns(edns);
    let mut update = query(name, RecordType::A);
    update.metadata.op_code = OpCode::Update;
    let mut two = query(name, RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii(name).unwrap(),
        RecordType::AAAA,
    ));
    let mut chaos = query(name, RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let cases = [
        (badvers, ResponseCode::BADVERS),
        (update, ResponseCode::NotImp),
        (two, ResponseCode::FormErr),
        (chaos, ResponseCode::Refused),
        (
            query("cluster.local.", RecordType::AXFR),
            ResponseCode::Refused,
        ),
        (query("example.com.", RecordType::A), ResponseCode::Refused),
    ];
    for (request, rcode) in cases {
        let r = udp(&responder, &request);
        // Compared as numbers: 16 decodes as BADSIG, which shares BADVERS's value.
        assert_eq!(
            u16::from(r.metadata.response_code),
            u16::from(rcode),
            "{request:?}"
        );
        assert!(r.answers.is_empty(), "{r:?}");
        assert!(!r.metadata.authoritative, "{r:?}");
    }
}

#[test]
fn empty_answers_carry_the_soa() {
    let r = udp(
        &responder(),
        &query("nope.default.svc.cluster.local.", RecordType::A),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn udp_is_truncated_to_the_client_size() {
    let responder = responder();
    let name = "many.default.svc.cluster.local.";
    let plain = udp(&responder, &query(name, RecordType::A));
    assert!(plain.metadata.truncation);
    assert!(plain.answers.len() < 60);
    let mut large = query(name, RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    large.set_edns(edns);
    let r = udp(&responder, &large);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 60);
    assert_eq!(r.edns.map(|e| e.max_payload()), Some(4096));
}
