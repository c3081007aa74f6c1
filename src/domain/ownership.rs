//! Records made from Kubernetes resources belong to them: people see them through the API and
//! UI but change them in Git, so Argo CD and people never fight over one record.

use std::fmt;

/// A Kubernetes resource that owns a record, e.g. `Release default/shop-android-1-4-0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResourceRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> ResourceRef {
        ResourceRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// How it is stored: `Kind/namespace/name`.
    pub fn to_stored(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    pub fn from_stored(value: &str) -> Option<ResourceRef> {
        let mut parts = value.splitn(3, '/');
        Some(ResourceRef::new(
            parts.next()?,
            parts.next()?,
            parts.next()?,
        ))
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The annotation that lets a Kubernetes resource take over a record made through the REST
/// API (the value must be `"true"`): without it, a resource never silently rewrites, or later
/// deletes, what people made by hand.
pub const ADOPT_ANNOTATION: &str = "capgo-server.io/adopt";

/// Who asks for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person or script through the management API (or the UI).
    Api,
    /// The operator, acting for this resource.
    Resource(ResourceRef),
    /// The operator, acting for a resource annotated with [`ADOPT_ANNOTATION`].
    AdoptingResource(ResourceRef),
}

impl Actor {
    /// The resource acting, if any.
    pub fn resource(&self) -> Option<&ResourceRef> {
        match self {
            Actor::Api => None,
            Actor::Resource(resource) | Actor::AdoptingResource(resource) => Some(resource),
        }
    }
}

/// Why an actor may not change a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipRefusal {
    /// The record belongs to a Kubernetes resource other than the actor.
    ManagedBy(ResourceRef),
    /// The record was made through the REST API, and the acting resource did not ask to
    /// adopt it.
    NotAdopted(ResourceRef),
}

impl OwnershipRefusal {
    /// What a person reads: which record, who manages it, and what to do.
    pub fn message(&self, record: &str) -> String {
        match self {
            OwnershipRefusal::ManagedBy(owner) => format!(
                "{record} is managed by the Kubernetes resource {owner}; change that resource \
                 instead (kubectl edit {} {} -n {})",
                owner.kind.to_lowercase(),
                owner.name,
                owner.namespace
            ),
            OwnershipRefusal::NotAdopted(acting) => format!(
                "{record} already exists and was made through the REST API; to manage it from \
                 {acting}, adopt it (kubectl annotate {} {} -n {} {ADOPT_ANNOTATION}=true), \
                 or delete it through the API first",
                acting.kind.to_lowercase(),
                acting.name,
                acting.namespace
            ),
        }
    }
}

/// Whether `actor` may change a record owned by `owner` (`None`: made through the API).
/// A resource changes only what it owns, or an unowned record it adopts.
pub fn check_may_change(
    owner: Option<&ResourceRef>,
    actor: &Actor,
) -> Result<(), OwnershipRefusal> {
    match (owner, actor) {
        (None, Actor::Api | Actor::AdoptingResource(_)) => Ok(()),
        (None, Actor::Resource(acting)) => Err(OwnershipRefusal::NotAdopted(acting.clone())),
        (Some(owner), acting) if acting.resource() == Some(owner) => Ok(()),
        (Some(owner), _) => Err(OwnershipRefusal::ManagedBy(owner.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_changes_an_owned_record() {
        let owner = ResourceRef::new("Release", "apps", "shop");
        assert!(check_may_change(None, &Actor::Api).is_ok());
        assert!(check_may_change(Some(&owner), &Actor::Resource(owner.clone())).is_ok());
        let refused = check_may_change(Some(&owner), &Actor::Api).unwrap_err();
        assert!(
            refused.message("release x").contains("Release apps/shop"),
            "{refused:?}"
        );
        let other = ResourceRef::new("Release", "apps", "other");
        assert!(check_may_change(Some(&owner), &Actor::Resource(other.clone())).is_err());
        assert!(check_may_change(Some(&owner), &Actor::AdoptingResource(other)).is_err());
    }

    #[test]
    fn a_resource_takes_over_an_api_record_only_by_adopting_it() {
        let acting = ResourceRef::new("Release", "apps", "shop");
        let refused = check_may_change(None, &Actor::Resource(acting.clone())).unwrap_err();
        assert_eq!(refused, OwnershipRefusal::NotAdopted(acting.clone()));
        let message = refused.message("the release for android app 1.0 (1)");
        assert!(
            message.contains("REST API") && message.contains(ADOPT_ANNOTATION),
            "{message}"
        );
        assert!(check_may_change(None, &Actor::AdoptingResource(acting)).is_ok());
    }

    #[test]
    fn stored_form_round_trips() {
        let owner = ResourceRef::new("Bundle", "ns", "web-1.0.1");
        assert_eq!(ResourceRef::from_stored(&owner.to_stored()), Some(owner));
    }
}
