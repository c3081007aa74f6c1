//! Status conditions: from what a reconcile concluded to `Ready` / `Reconciling` / `Stalled`,
//! in the Kubernetes shape. Pure, so it is tested without an API server.

use super::crd::Condition;
use crate::catalog::CatalogError;

/// The one mapping from a catalog refusal to the reason of a `Stalled` condition: `None` for
/// failures that retrying fixes (storage unreachable, a concurrent change).
pub fn stall_reason(error: &CatalogError) -> Option<&'static str> {
    match error {
        CatalogError::Invalid(_) => Some("InvalidSpec"),
        CatalogError::ChecksumMismatch(_) => Some("ChecksumMismatch"),
        CatalogError::NotFound(_) => Some("NotFound"),
        CatalogError::Duplicate(_) => Some("AlreadyExists"),
        CatalogError::InUse(_) => Some("DeletionBlocked"),
        CatalogError::Owned {
            adoptable: true, ..
        } => Some("AdoptionRequired"),
        CatalogError::Owned { .. } => Some("ManagedElsewhere"),
        CatalogError::TooLarge(_) => Some("TooLarge"),
        CatalogError::Busy(_)
        | CatalogError::Unavailable { .. }
        | CatalogError::Internal { .. } => None,
    }
}

/// What a reconcile concluded about a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The record matches the spec.
    Ready { message: String },
    /// Work is under way or waits on something that will come (a Bundle still being fetched).
    Progressing { reason: String, message: String },
    /// The spec cannot be satisfied as written; a person must change it.
    Stalled { reason: String, message: String },
}

/// The three conditions for `outcome` at `generation`, keeping each previous condition's
/// `lastTransitionTime` when its status did not change.
pub fn conditions_for(
    outcome: &Outcome,
    generation: i64,
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let (ready, reconciling, stalled) = match outcome {
        Outcome::Ready { message } => (
            ("True", "Reconciled", message.as_str()),
            ("False", "Reconciled", ""),
            ("False", "Reconciled", ""),
        ),
        Outcome::Progressing { reason, message } => (
            ("False", reason.as_str(), message.as_str()),
            ("True", reason.as_str(), message.as_str()),
            ("False", reason.as_str(), ""),
        ),
        Outcome::Stalled { reason, message } => (
            ("False", reason.as_str(), message.as_str()),
            ("False", reason.as_str(), ""),
            ("True", reason.as_str(), message.as_str()),
        ),
    };
    [
        ("Ready", ready),
        ("Reconciling", reconciling),
        ("Stalled", stalled),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: generation,
        }
    })
    .collect()
}

/// The reason and message of `outcome` when it is a stall that `previous` did not show (no
/// `Stalled=True` condition with the same reason and message): what deserves an Event.
pub fn new_stall<'a>(previous: &[Condition], outcome: &'a Outcome) -> Option<(&'a str, &'a str)> {
    let Outcome::Stalled { reason, message } = outcome else {
        return None;
    };
    let known = previous.iter().any(|c| {
        c.type_ == "Stalled" && c.status == "True" && c.reason == *reason && c.message == *message
    });
    (!known).then_some((reason.as_str(), message.as_str()))
}

/// A status that carries the three conditions, so rules about conditions serve every kind.
pub trait WithConditions: Default + Clone {
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
}

impl WithConditions for super::crd::BundleStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}

impl WithConditions for super::crd::ReleaseStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}

impl WithConditions for super::crd::ChannelStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_progressing_stalled() {
        let ready = conditions_for(
            &Outcome::Ready {
                message: "serving".into(),
            },
            3,
            &[],
            "t1",
        );
        assert_eq!(find(&ready, "Ready").status, "True");
        assert_eq!(find(&ready, "Stalled").status, "False");
        assert!(ready.iter().all(|c| c.observed_generation == 3));
        let stalled = conditions_for(
            &Outcome::Stalled {
                reason: "BundleNotFound".into(),
                message: "no Bundle web-2".into(),
            },
            4,
            &ready,
            "t2",
        );
        assert_eq!(find(&stalled, "Stalled").status, "True");
        assert_eq!(find(&stalled, "Stalled").message, "no Bundle web-2");
        assert_eq!(find(&stalled, "Ready").status, "False");
        let progressing = conditions_for(
            &Outcome::Progressing {
                reason: "Fetching".into(),
                message: "".into(),
            },
            4,
            &stalled,
            "t3",
        );
        assert_eq!(find(&progressing, "Reconciling").status, "True");
    }

    #[test]
    fn a_stall_is_new_until_the_conditions_show_it() {
        let stalled = Outcome::Stalled {
            reason: "BundleNotFound".into(),
            message: "no Bundle web-2".into(),
        };
        assert_eq!(
            new_stall(&[], &stalled),
            Some(("BundleNotFound", "no Bundle web-2"))
        );
        let shown = conditions_for(&stalled, 1, &[], "t1");
        assert_eq!(new_stall(&shown, &stalled), None);
        let other = Outcome::Stalled {
            reason: "BundleNotFound".into(),
            message: "no Bundle web-3".into(),
        };
        assert!(new_stall(&shown, &other).is_some(), "another message");
        let ready = Outcome::Ready {
            message: "serving".into(),
        };
        assert_eq!(new_stall(&[], &ready), None);
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let first = conditions_for(
            &Outcome::Ready {
                message: "a".into(),
            },
            1,
            &[],
            "t1",
        );
        let again = conditions_for(
            &Outcome::Ready {
                message: "b".into(),
            },
            2,
            &first,
            "t2",
        );
        assert_eq!(find(&again, "Ready").last_transition_time, "t1");
        assert_eq!(find(&again, "Ready").observed_generation, 2);
        let stalled = conditions_for(
            &Outcome::Stalled {
                reason: "X".into(),
                message: "x".into(),
            },
            3,
            &again,
            "t3",
        );
        assert_eq!(find(&stalled, "Ready").last_transition_time, "t3");
        assert_eq!(
            find(&stalled, "Reconciling").last_transition_time,
            "t1",
            "still False"
        );
    }
}
