//! Unit tests of in-process resolution: the search list, the namespace, and aliases.

use super::{Names, Resolved};
use crate::table::tests::services;

fn names() -> Names {
    Names::build("cluster.local", &services()).unwrap()
}

fn cluster(name: &str, addrs: &[&str]) -> Resolved {
    Resolved::Cluster {
        name: name.to_owned(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

#[test]
fn short_and_qualified_names_find_the_service_in_the_pods_namespace() {
    let n = names();
    let web = cluster("web.default.svc.cluster.local", &["10.96.0.10", "fd00::10"]);
    for host in [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
        "web.default.svc.cluster.local.",
        "WEB.Default",
    ] {
        assert_eq!(n.resolve(host, "default"), web, "{host}");
    }
    // From another namespace the short name is not this one (so it is for the node's
    // resolvers, as a pod's resolver would ask them last), the qualified one is.
    assert_eq!(n.resolve("web", "prod"), Resolved::Outside("web".into()));
    assert_eq!(n.resolve("web.default", "prod"), web);
}

#[test]
fn headless_services_and_their_pods_resolve_to_ready_pod_addresses() {
    let n = names();
    let Resolved::Cluster { name, mut addrs } = n.resolve("nginx", "default") else {
        panic!("nginx is a cluster name");
    };
    addrs.sort();
    assert_eq!(name, "nginx.default.svc.cluster.local");
    assert_eq!(
        addrs,
        ["10.1.0.1", "10.1.0.3"].map(|a| a.parse::<std::net::IpAddr>().unwrap())
    );
    assert_eq!(
        n.resolve("web-0.nginx", "default"),
        cluster("web-0.nginx.default.svc.cluster.local", &["10.1.0.1"])
    );
    // No ready endpoint: the name exists but has no address.
    assert_eq!(
        n.resolve("empty.default.svc.cluster.local.", "default"),
        Resolved::NotFound
    );
}

#[test]
fn aliases_outside_names_and_missing_cluster_names() {
    let n = names();
    assert_eq!(
        n.resolve("db", "prod"),
        Resolved::Outside("db.example.com".into())
    );
    // An alias to a cluster name is followed inside the table.
    assert_eq!(
        n.resolve("alias", "prod"),
        cluster("alias.prod.svc.cluster.local", &["10.96.0.10", "fd00::10"])
    );
    for host in ["example.com", "localhost", "a.b.c.d.e.f", "example.com."] {
        assert_eq!(
            n.resolve(host, "default"),
            Resolved::Outside(host.trim_end_matches('.').into()),
            "{host}"
        );
    }
    assert_eq!(
        n.resolve("nope.default.svc.cluster.local", "default"),
        Resolved::NotFound
    );
    assert_eq!(
        n.resolve("nope.cluster.local.", "default"),
        Resolved::NotFound
    );
    let empty = Names::empty("cluster.local").unwrap();
    assert_eq!(
        empty.resolve("web.default.svc.cluster.local", "default"),
        Resolved::NotFound
    );
}

#[test]
fn made_up_pod_names_do_not_resolve_in_process() {
    let n = names();
    for host in [
        "127-0-0-1.default.pod.cluster.local",
        "10-1-0-1.default.pod.cluster.local.",
    ] {
        assert_eq!(n.resolve(host, "default"), Resolved::NotFound, "{host}");
    }
    assert_eq!(n.domain(), "cluster.local");
}
