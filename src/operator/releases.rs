//! The `Release` controller: resolve the Bundles a Release names, converge the release record
//! to the spec, and report what each channel serves.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::conditions::{conditions_for, Outcome};
use super::crd::{Bundle, PlatformSpec, Release, ReleaseSpec, ReleaseStatus};
use super::{
    actor_of, apply_status, display_name, now_rfc3339, report_denial, with_finalizer, Context,
    Failure, OperatorError,
};
use crate::catalog::{CatalogError, DesiredRelease};
use crate::domain::names::{check_app_id, check_native_version};
use crate::domain::{
    Actor, ChannelName, Platform, RecordId, Release as ReleaseRecord, ReleaseKey, ResourceRef,
};

pub fn owner_of(release: &Release) -> ResourceRef {
    ResourceRef::new(
        "Release",
        &release.namespace().unwrap_or_default(),
        &release.name_any(),
    )
}

/// A Bundle a Release names, as the Release controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRef {
    Missing,
    /// Exists but has no stored record yet (being fetched, or stalled).
    NotReady,
    Ready {
        id: RecordId,
        version_name: String,
    },
}

/// Why a Release cannot be applied now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The spec must change.
    Spec {
        reason: &'static str,
        message: String,
    },
    /// A Bundle is not ready yet; try again soon.
    Waiting(String),
}

/// Every Bundle name the spec refers to, builtin first.
pub fn bundle_names(spec: &ReleaseSpec) -> Vec<String> {
    let mut names = vec![spec.builtin_bundle.clone()];
    for name in spec.channels.values() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The record a Release asks for, given what its Bundles resolved to.
pub fn desired_release(
    release: &Release,
    bundles: &BTreeMap<String, BundleRef>,
) -> Result<DesiredRelease, Blocked> {
    let spec = &release.spec;
    let invalid = |message: String| Blocked::Spec {
        reason: "InvalidSpec",
        message,
    };
    check_app_id(&spec.app_id).map_err(|e| invalid(e.0))?;
    check_native_version(&spec.version_name, "versionName").map_err(|e| invalid(e.0))?;
    check_native_version(&spec.version_code, "versionCode").map_err(|e| invalid(e.0))?;
    let namespace = release.namespace().unwrap_or_default();
    let resolve = |name: &String| match bundles.get(name) {
        Some(BundleRef::Ready { id, .. }) => Ok(id.clone()),
        Some(BundleRef::NotReady) => Err(Blocked::Waiting(format!(
            "waiting for Bundle {name} to be stored"
        ))),
        _ => Err(Blocked::Spec {
            reason: "BundleNotFound",
            message: format!(
                "Bundle {name} does not exist in namespace {namespace}; create it or fix the name"
            ),
        }),
    };
    let mut channels = BTreeMap::new();
    for (channel, bundle) in &spec.channels {
        let channel =
            ChannelName::parse(channel).map_err(|e| invalid(format!("channels: {}", e.0)))?;
        channels.insert(channel, resolve(bundle)?);
    }
    Ok(DesiredRelease {
        key: ReleaseKey {
            platform: match spec.platform {
                PlatformSpec::Android => Platform::Android,
                PlatformSpec::Ios => Platform::Ios,
                PlatformSpec::Electron => Platform::Electron,
            },
            app_id: spec.app_id.clone(),
            version_name: spec.version_name.clone(),
            version_code: spec.version_code.clone(),
        },
        builtin_bundle_id: resolve(&spec.builtin_bundle)?,
        channels,
        owner: owner_of(release),
        adopt: matches!(
            actor_of(release, owner_of(release)),
            Actor::AdoptingResource(_)
        ),
    })
}

/// Channel → the version name its devices get, from the record as the catalog serves it.
pub fn serving(
    record: &ReleaseRecord,
    versions: &BTreeMap<RecordId, String>,
) -> BTreeMap<String, String> {
    record
        .serving_by_channel()
        .into_iter()
        .map(|(channel, serving)| {
            let version = versions
                .get(serving.bundle_id)
                .cloned()
                .unwrap_or_else(|| serving.bundle_id.to_string());
            (channel.to_string(), version)
        })
        .collect()
}

/// The Releases in `known` that name `bundle`, so a Bundle that turns Ready (or changes)
/// re-reconciles them at once instead of at their next poll.
pub fn naming(known: &Store<Release>, bundle: &Bundle) -> Vec<ObjectRef<Release>> {
    let name = bundle.name_any();
    known
        .state()
        .iter()
        .filter(|release| {
            release.namespace() == bundle.namespace() && bundle_names(&release.spec).contains(&name)
        })
        .map(|release| ObjectRef::from_obj(release.as_ref()))
        .collect()
}

pub async fn reconcile(release: Arc<Release>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = std::time::Instant::now();
    let api: Api<Release> =
        Api::namespaced(ctx.client.clone(), &release.namespace().unwrap_or_default());
    let (ctx, api_ref) = (ctx.as_ref(), &api);
    let result = with_finalizer(
        &api,
        release.clone(),
        |release| async move { apply(&release, ctx, api_ref).await },
        |release| async move { cleanup(&release, ctx).await },
    )
    .await;
    if let Some(denied) = result.as_ref().err().and_then(OperatorError::denied) {
        report_denial(
            ctx,
            &api,
            release.as_ref(),
            release.status.as_ref(),
            &denied,
        )
        .await;
    }
    crate::metrics::global().reconcile("Release", result.is_ok(), started.elapsed());
    result
}

async fn resolve_bundles(
    release: &Release,
    ctx: &Context,
) -> Result<BTreeMap<String, BundleRef>, OperatorError> {
    let bundles: Api<Bundle> =
        Api::namespaced(ctx.client.clone(), &release.namespace().unwrap_or_default());
    let mut resolved = BTreeMap::new();
    for name in bundle_names(&release.spec) {
        let state = match bundles.get_opt(&name).await? {
            None => BundleRef::Missing,
            Some(bundle) => match bundle.status.as_ref().and_then(|s| s.bundle_id.as_deref()) {
                Some(id) => match RecordId::parse(id, "bundle id") {
                    Ok(id) => BundleRef::Ready {
                        id,
                        version_name: bundle.spec.version_name.clone(),
                    },
                    Err(_) => BundleRef::NotReady,
                },
                None => BundleRef::NotReady,
            },
        };
        resolved.insert(name, state);
    }
    Ok(resolved)
}

async fn apply(
    release: &Release,
    ctx: &Context,
    api: &Api<Release>,
) -> Result<Action, OperatorError> {
    let bundles = resolve_bundles(release, ctx).await?;
    let converged = match desired_release(release, &bundles) {
        Ok(desired) => converge(release, &desired, ctx).await,
        Err(Blocked::Spec { reason, message }) => Err(Failure::Stalled(Outcome::Stalled {
            reason: reason.into(),
            message,
        })),
        Err(Blocked::Waiting(message)) => Err(Failure::Stalled(Outcome::Progressing {
            reason: "WaitingForBundle".into(),
            message,
        })),
    };
    let previous = release.status.clone().unwrap_or_default();
    let (record, outcome) = match converged {
        Ok(record) => (
            Some(record),
            Outcome::Ready {
                message: "devices are served as specified".into(),
            },
        ),
        Err(Failure::Stalled(outcome)) => (None, outcome),
        Err(Failure::Retry(error)) => return Err(error),
    };
    let generation = release.metadata.generation.unwrap_or_default();
    // What devices get now: from the record when it matches the spec, else as last reported.
    let channels = match &record {
        Some(record) => {
            let versions = bundles
                .values()
                .filter_map(|b| match b {
                    BundleRef::Ready { id, version_name } => {
                        Some((id.clone(), version_name.clone()))
                    }
                    _ => None,
                })
                .collect();
            serving(record, &versions)
        }
        None => previous.channels.clone(),
    };
    let status = ReleaseStatus {
        observed_generation: generation,
        conditions: conditions_for(&outcome, generation, &previous.conditions, &now_rfc3339()),
        release_id: record
            .as_ref()
            .map(|r| r.id.to_string())
            .or(previous.release_id.clone()),
        serving: (!channels.is_empty()).then(|| {
            channels
                .iter()
                .map(|(c, v)| format!("{c}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        channels,
    };
    apply_status(ctx, api, release, release.status.as_ref(), status, &outcome).await
}

/// Converges the record to `desired`, removing the one made for an earlier native version.
async fn converge(
    release: &Release,
    desired: &DesiredRelease,
    ctx: &Context,
) -> Result<ReleaseRecord, Failure> {
    forget_previous_record(release, desired, ctx).await?;
    let (record, written) = ctx.catalog.apply_release(desired).await?;
    if written {
        tracing::info!(release = display_name(release), key = %record.key, "release record converged");
    }
    Ok(record)
}

/// When a spec's native version changed, the record made for the old one goes.
async fn forget_previous_record(
    release: &Release,
    desired: &DesiredRelease,
    ctx: &Context,
) -> Result<(), CatalogError> {
    let Some(previous) = release
        .status
        .as_ref()
        .and_then(|s| s.release_id.as_deref())
    else {
        return Ok(());
    };
    match ctx.catalog.release(previous).await {
        Ok(record)
            if record.key != desired.key && record.owner.as_ref() == Some(&desired.owner) =>
        {
            ctx.catalog
                .delete_release(previous, &Actor::Resource(desired.owner.clone()))
                .await?;
            Ok(())
        }
        Ok(_) | Err(CatalogError::NotFound(_) | CatalogError::Invalid(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn cleanup(release: &Release, ctx: &Context) -> Result<Action, OperatorError> {
    let owner = owner_of(release);
    let record_id = release.status.as_ref().and_then(|s| s.release_id.clone());
    let Some(record_id) = record_id else {
        return Ok(Action::await_change());
    };
    match ctx
        .catalog
        .delete_release(&record_id, &Actor::Resource(owner))
        .await
    {
        // Already gone, or never ours: either way nothing of this resource remains.
        Ok(_)
        | Err(CatalogError::NotFound(_) | CatalogError::Owned { .. } | CatalogError::Invalid(_)) => {
            tracing::info!(release = display_name(release), "release record removed");
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(channels: &[(&str, &str)]) -> Release {
        let mut release = Release::new(
            "shop-android",
            ReleaseSpec {
                platform: PlatformSpec::Android,
                app_id: "com.example.app".into(),
                version_name: "1.4.0".into(),
                version_code: "140".into(),
                builtin_bundle: "web-1-4-0".into(),
                channels: channels
                    .iter()
                    .map(|(c, b)| (c.to_string(), b.to_string()))
                    .collect(),
            },
        );
        release.metadata.namespace = Some("apps".into());
        release
    }

    fn ready(version: &str) -> BundleRef {
        BundleRef::Ready {
            id: RecordId::generate(),
            version_name: version.into(),
        }
    }

    #[test]
    fn desired_record_from_spec() {
        let spec = release(&[("production", "web-1-4-1"), ("beta", "web-1-5-0")]);
        let bundles = BTreeMap::from([
            ("web-1-4-0".to_string(), ready("1.4.0")),
            ("web-1-4-1".to_string(), ready("1.4.1")),
            ("web-1-5-0".to_string(), ready("1.5.0")),
        ]);
        // Builtin first, then channels in name order (beta, production).
        assert_eq!(
            bundle_names(&spec.spec),
            ["web-1-4-0", "web-1-5-0", "web-1-4-1"]
        );
        let desired = desired_release(&spec, &bundles).unwrap();
        assert_eq!(desired.key.platform, Platform::Android);
        assert_eq!(desired.channels.len(), 2);
        assert_eq!(
            desired.owner,
            ResourceRef::new("Release", "apps", "shop-android")
        );
        let BundleRef::Ready { id, .. } = &bundles["web-1-4-0"] else {
            unreachable!()
        };
        assert_eq!(&desired.builtin_bundle_id, id);
        assert!(!desired.adopt);
    }

    fn record(builtin: &RecordId, channels: &[(&str, &RecordId)]) -> ReleaseRecord {
        ReleaseRecord {
            id: RecordId::generate(),
            key: ReleaseKey {
                platform: Platform::Android,
                app_id: "com.example.app".into(),
                version_name: "1.4.0".into(),
                version_code: "140".into(),
            },
            builtin_bundle_id: builtin.clone(),
            channels: channels
                .iter()
                .map(|(c, id)| (ChannelName::parse(c).unwrap(), (*id).clone()))
                .collect(),
            release_date: None,
            created_at: 0,
            updated_at: 0,
            owner: None,
        }
    }

    #[test]
    fn serving_names_each_channels_version() {
        let (builtin, beta) = (RecordId::generate(), RecordId::generate());
        let versions = BTreeMap::from([
            (builtin.clone(), "1.4.0".to_string()),
            (beta.clone(), "1.5.0".to_string()),
        ]);
        assert_eq!(
            serving(&record(&builtin, &[("beta", &beta)]), &versions),
            BTreeMap::from([
                ("beta".to_string(), "1.5.0".to_string()),
                ("production".to_string(), "1.4.0".to_string()),
            ])
        );
    }

    #[test]
    fn the_adopt_annotation_asks_to_take_over_an_api_record() {
        let mut spec = release(&[]);
        spec.metadata.annotations = Some(BTreeMap::from([(
            crate::domain::ownership::ADOPT_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
        let bundles = BTreeMap::from([("web-1-4-0".to_string(), ready("1.4.0"))]);
        assert!(desired_release(&spec, &bundles).unwrap().adopt);
    }

    #[test]
    fn unknown_or_unready_bundles_block() {
        let spec = release(&[("beta", "web-2")]);
        let mut bundles = BTreeMap::from([
            ("web-1-4-0".to_string(), ready("1.4.0")),
            ("web-2".to_string(), BundleRef::Missing),
        ]);
        let Err(Blocked::Spec { reason, message }) = desired_release(&spec, &bundles) else {
            panic!("missing bundle")
        };
        assert_eq!(reason, "BundleNotFound");
        assert!(
            message.contains("web-2") && message.contains("apps"),
            "{message}"
        );
        bundles.insert("web-2".into(), BundleRef::NotReady);
        assert!(matches!(
            desired_release(&spec, &bundles),
            Err(Blocked::Waiting(_))
        ));
        let bad_channel = release(&[("no spaces", "web-1-4-0")]);
        assert!(matches!(
            desired_release(&bad_channel, &bundles),
            Err(Blocked::Spec {
                reason: "InvalidSpec",
                ..
            })
        ));
    }
}
