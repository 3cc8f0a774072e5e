//! The Ingress status controller: the agents of the gateway nodes serve every Ingress that is
//! ours (`ingress::is_ours`), so `status.loadBalancer.ingress` lists the InternalIPs of the
//! Ready gateways, as for LoadBalancer services. Ingresses of other controllers are left
//! alone.
use super::{Controller, Ctx, Requeue};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{IngressClass, Kind, Object, ObjectKey};

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

/// A class changing may make any Ingress ours or not; gateways changing moves addresses.
fn all_on(e: &StoreEvent) -> bool {
    e.key.kind == Kind::IngressClass || super::servicelb::gateways_changed(e)
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, _: &Ctx) -> Result<Requeue, StoreError> {
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
    let want = super::servicelb::ingress(&super::nodes(tx)?);
    if ing.status.load_balancer.ingress != want {
        ing.status.load_balancer.ingress = want;
        tx.put(Object::Ingress(ing))?;
    }
    Ok(None)
}
