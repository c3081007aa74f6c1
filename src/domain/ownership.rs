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

/// Who asks for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person or script through the management API (or the UI).
    Api,
    /// The operator, acting for this resource.
    Resource(ResourceRef),
}

/// `Err(message)` when `actor` may not change a record owned by `owner`.
pub fn check_may_change(
    owner: Option<&ResourceRef>,
    actor: &Actor,
    record: &str,
) -> Result<(), String> {
    match (owner, actor) {
        (None, _) => Ok(()),
        (Some(owner), Actor::Resource(acting)) if owner == acting => Ok(()),
        (Some(owner), _) => Err(format!(
            "{record} is managed by the Kubernetes resource {owner}; change that resource instead \
             (kubectl edit {} {} -n {})",
            owner.kind.to_lowercase(),
            owner.name,
            owner.namespace
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_changes_an_owned_record() {
        let owner = ResourceRef::new("Release", "apps", "shop");
        assert!(check_may_change(None, &Actor::Api, "release x").is_ok());
        assert!(
            check_may_change(Some(&owner), &Actor::Resource(owner.clone()), "release x").is_ok()
        );
        let refused = check_may_change(Some(&owner), &Actor::Api, "release x").unwrap_err();
        assert!(refused.contains("Release apps/shop"), "{refused}");
        let other = ResourceRef::new("Release", "apps", "other");
        assert!(check_may_change(Some(&owner), &Actor::Resource(other), "release x").is_err());
    }

    #[test]
    fn stored_form_round_trips() {
        let owner = ResourceRef::new("Bundle", "ns", "web-1.0.1");
        assert_eq!(ResourceRef::from_stored(&owner.to_stored()), Some(owner));
    }
}
