//! The Ingress status controller: the agents of the gateway nodes serve every Ingress that is
//! ours (`ingress::is_ours`), so `status.loadBalancer.ingress` lists the InternalIPs of the
//! Ready gateways, as for LoadBalancer services. Ingresses of other controllers are left
//! alone.
//!
//! It also reports, as Warning events on the Ingress, what keeps part of it from being
//! served as written ([`problems`]): a backend Service or port that does not exist, a TLS
//! Secret that is missing or cannot be served (its hosts get the default certificate), a
//! Middleware that does not exist, and a basicAuth Secret that cannot be used. The agents
//! serve the rest of that Ingress, and every other Ingress, as before.
use super::{Controller, Ctx, Requeue};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{EventType, Ingress, IngressClass, Kind, Object, ObjectKey};
use flotilla_proto::ingress as rules;
use std::collections::{BTreeSet, HashMap};

const COMPONENT: &str = "ingress-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "ingress",
    kind: Kind::Ingress,
    keys_of,
    all_on,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Ingress => vec![e.key.clone()],
        _ => vec![],
    }
}

/// A class changing may make any Ingress ours or not; gateways changing moves addresses; a
/// Service, Secret or Middleware changing may mend or break what an Ingress refers to.
fn all_on(e: &StoreEvent) -> bool {
    matches!(
        e.key.kind,
        Kind::IngressClass | Kind::Service | Kind::Secret | Kind::Middleware
    ) || super::servicelb::gateways_changed(e)
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let Some(Object::Ingress(mut ing)) = tx.get(key)? else {
        return Ok(None);
    };
    let classes: Vec<IngressClass> = tx
        .list(Kind::IngressClass, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::IngressClass(c) => Some(c),
            _ => None,
        })
        .collect();
    if !flotilla_proto::ingress::is_ours(&ing, &classes) {
        return Ok(None);
    }
    let found = problems(tx, &ing)?;
    if !found.is_empty() {
        let about = Object::Ingress(ing.clone());
        for (reason, message) in found {
            events::about(
                tx,
                &about,
                EventType::Warning,
                reason,
                &message,
                COMPONENT,
                ctx.now,
            )?;
        }
    }
    let want = super::servicelb::ingress(&super::nodes(tx)?);
    if ing.status.load_balancer.ingress != want {
        ing.status.load_balancer.ingress = want;
        tx.put(Object::Ingress(ing))?;
    }
    Ok(None)
}

/// What keeps part of `ing` from being served as written, as (reason, message).
fn problems(tx: &Tx<'_>, ing: &Ingress) -> Result<Vec<(&'static str, String)>, StoreError> {
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for b in rules::backends(ing) {
        if !seen.insert((&b.name, &b.port)) {
            continue;
        }
        match tx.get(&ObjectKey::new(Kind::Service, ns, &b.name))? {
            Some(Object::Service(svc)) => {
                if !svc
                    .spec
                    .ports
                    .iter()
                    .any(|p| b.port.matches(p.name.as_deref(), p.port))
                {
                    let port = match (&b.port.name, b.port.number) {
                        (Some(n), _) => format!("{n:?}"),
                        (None, Some(n)) => n.to_string(),
                        (None, None) => "(none)".into(),
                    };
                    out.push((
                        "BackendNotFound",
                        format!(
                            "service {ns}/{} has no port {port}: its routes answer 503",
                            b.name
                        ),
                    ));
                }
            }
            _ => out.push((
                "BackendNotFound",
                format!(
                    "service {ns}/{} does not exist: its routes answer 503",
                    b.name
                ),
            )),
        }
    }
    for name in ing
        .spec
        .tls
        .iter()
        .filter_map(|t| t.secret_name.as_deref())
        .collect::<BTreeSet<_>>()
    {
        let why = match tx.get(&ObjectKey::new(Kind::Secret, ns, name))? {
            Some(Object::Secret(s)) => flotilla_transport::tls_secret_key(&s).err(),
            _ => Some("it does not exist".into()),
        };
        if let Some(why) = why {
            out.push((
                "InvalidTLSSecret",
                format!(
                    "secret {ns}/{name} cannot be served ({why}): its hosts get the default certificate"
                ),
            ));
        }
    }
    let refs = rules::middleware_refs(ing).unwrap_or_default();
    if !refs.is_empty() {
        let listed = tx.list(Kind::Middleware, None)?;
        let by_key: HashMap<String, _> = listed
            .iter()
            .filter_map(|o| match o {
                Object::Middleware(m) => Some((rules::middleware_key(m), m)),
                _ => None,
            })
            .collect();
        for key in refs {
            let Some(m) = by_key.get(&key) else {
                out.push((
                    "MiddlewareNotFound",
                    format!("middleware {key} does not exist: the Ingress's routes answer 503"),
                ));
                continue;
            };
            let Some(auth) = &m.spec.basic_auth else {
                continue;
            };
            let mns = m.metadata.namespace.as_deref().unwrap_or("default");
            let why = match tx.get(&ObjectKey::new(Kind::Secret, mns, &auth.secret))? {
                Some(o) => rules::basic_auth_users(&o).err(),
                None => Some("it does not exist".into()),
            };
            if let Some(why) = why {
                out.push((
                    "InvalidBasicAuthSecret",
                    format!(
                        "secret {mns}/{} of middleware {key} cannot be used ({why}): its routes refuse every request",
                        auth.secret
                    ),
                ));
            }
        }
    }
    Ok(out)
}
