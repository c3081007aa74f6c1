//! The `Release` controller: resolve the Bundles a Release names, converge the release record
//! to the spec, and report what each channel serves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use kube::runtime::events::EventType;

use super::conditions::{conditions_for, Outcome};
use super::crd::{Bundle, ChannelRolloutStatus, PlatformSpec, Release, ReleaseSpec, ReleaseStatus};
use super::rollouts::{self, ChannelRollout};
use super::{
    actor_of, announce_stall, display_name, next_look, now_rfc3339, report_denial, with_finalizer,
    write_status, Context, Failure, OperatorError,
};
use crate::catalog::{CatalogError, DesiredRelease};
use crate::domain::names::{check_app_id, check_native_version};
use crate::domain::rollout::Rollout;
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
    let mut rollouts = BTreeMap::new();
    for (channel, plan) in &spec.rollouts {
        let name =
            ChannelName::parse(channel).map_err(|e| invalid(format!("rollouts: {}", e.0)))?;
        if !spec.channels.contains_key(channel) {
            return Err(invalid(format!(
                "rollouts.{channel}: not a channel in channels (rollouts.<channel> stages the changes of channels.<channel>)"
            )));
        }
        let plan = plan
            .to_domain()
            .plan()
            .map_err(|e| invalid(format!("rollouts.{channel}.{}", e.0)))?;
        rollouts.insert(name, plan);
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
        rollouts,
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
    let desired = desired_release(release, &bundles);
    let converged = match &desired {
        Ok(desired) => converge(release, desired, ctx).await,
        Err(Blocked::Spec { reason, message }) => Err(Failure::Stalled(Outcome::Stalled {
            reason: (*reason).into(),
            message: message.clone(),
        })),
        Err(Blocked::Waiting(message)) => Err(Failure::Stalled(Outcome::Progressing {
            reason: "WaitingForBundle".into(),
            message: message.clone(),
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
    let observed = observe(
        ctx,
        release,
        &bundles,
        desired.as_ref().ok().zip(record.as_ref()),
        &previous,
    )
    .await?;
    // Rollouts only refine a Release whose spec is applied: a spec problem comes first.
    let outcome = match outcome {
        Outcome::Ready { .. } => rollouts::outcome(&observed.rollouts).unwrap_or(outcome),
        other => other,
    };
    let generation = release.metadata.generation.unwrap_or_default();
    let rollout_statuses: BTreeMap<String, ChannelRolloutStatus> = observed
        .rollouts
        .iter()
        .map(|r| (r.channel.clone(), r.status.clone()))
        .collect();
    let channels = observed.channels;
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
                .map(|(c, v)| rollouts::serving_entry(c, v, rollout_statuses.get(c)))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        channels,
        rollouts: rollout_statuses,
    };
    if write_status(api, release, release.status.as_ref(), &status).await? {
        // A rollback is announced by its transition below, with the rollout's own words.
        if !matches!(&outcome, Outcome::Stalled { reason, .. } if reason == rollouts::ROLLED_BACK) {
            announce_stall(ctx, release, &previous.conditions, &outcome).await;
        }
        announce_rollouts(ctx, release, &previous.rollouts, &status.rollouts).await;
    }
    Ok(if observed.rollouts.iter().any(ChannelRollout::is_active) {
        Action::requeue(rollouts::ROLLOUT_POLL)
    } else {
        next_look(&outcome)
    })
}

/// What a Release's status reports besides its conditions.
struct Observed {
    /// Channel → the version its devices get.
    channels: BTreeMap<String, String>,
    rollouts: Vec<ChannelRollout>,
}

/// What each channel serves and how its rollout goes, from the record `applied` converged to
/// (with the spec it was converged to) or, when the spec could not be applied, from the
/// status as last reported and the record it names.
async fn observe(
    ctx: &Context,
    release: &Release,
    bundles: &BTreeMap<String, BundleRef>,
    applied: Option<(&DesiredRelease, &ReleaseRecord)>,
    previous: &ReleaseStatus,
) -> Result<Observed, OperatorError> {
    let record = applied.map(|(_, record)| record);
    let record_id = record.map(|r| r.id.clone()).or_else(|| {
        let previous_id = previous.release_id.as_deref()?;
        RecordId::parse(previous_id, "release id").ok()
    });
    let rollouts = match &record_id {
        Some(id) => rollouts_of(ctx, id, release, record, previous).await?,
        None => Vec::new(),
    };
    // Collected first: a lazy iterator held across the await would make the future not Send.
    let mut shown: Vec<&RecordId> = rollouts
        .iter()
        .flat_map(|r| [&r.stable_bundle_id, &r.canary_bundle_id])
        .collect();
    shown.extend(
        record
            .into_iter()
            .flat_map(ReleaseRecord::referenced_bundles),
    );
    let versions = bundle_versions(ctx, bundles, shown).await?;
    Ok(Observed {
        channels: match record {
            Some(record) => serving(record, &versions),
            None => previous.channels.clone(),
        },
        rollouts: rollouts
            .iter()
            .map(|r| ChannelRollout::new(r, &versions, applied))
            .collect(),
    })
}

/// The rollout of each channel of the record that may have one: the channels it serves, those
/// the spec plans rollouts for, and those the status showed one for.
async fn rollouts_of(
    ctx: &Context,
    record_id: &RecordId,
    release: &Release,
    record: Option<&ReleaseRecord>,
    previous: &ReleaseStatus,
) -> Result<Vec<Rollout>, OperatorError> {
    let mut channels: BTreeSet<ChannelName> = record
        .map(|r| r.channels.keys().cloned().collect())
        .unwrap_or_default();
    let named = release.spec.rollouts.keys().chain(previous.rollouts.keys());
    channels.extend(named.filter_map(|c| ChannelName::parse(c).ok()));
    let mut rollouts = Vec::new();
    for channel in &channels {
        if let Some(rollout) = ctx.catalog.rollout(record_id, channel).await? {
            rollouts.push(rollout);
        }
    }
    Ok(rollouts)
}

/// Publishes an Event for every rollout transition from `previous` to `current`.
async fn announce_rollouts(
    ctx: &Context,
    release: &Release,
    previous: &BTreeMap<String, ChannelRolloutStatus>,
    current: &BTreeMap<String, ChannelRolloutStatus>,
) {
    for (channel, now) in current {
        for event in rollouts::transitions(channel, previous.get(channel), now) {
            let type_ = if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            tracing::info!(
                release = display_name(release),
                channel,
                reason = event.reason,
                "{}",
                event.note
            );
            ctx.publish_action(release, type_, event.reason, "Rollout", &event.note)
                .await;
        }
    }
}

/// Version names of `ids`: from the Bundles the spec names, else from the catalog (a bundle the
/// spec no longer names, such as a rollout's stable one); a bundle gone shows as its id.
async fn bundle_versions<'a>(
    ctx: &Context,
    named: &BTreeMap<String, BundleRef>,
    ids: impl IntoIterator<Item = &'a RecordId>,
) -> Result<BTreeMap<RecordId, String>, OperatorError> {
    let mut versions: BTreeMap<RecordId, String> = named
        .values()
        .filter_map(|b| match b {
            BundleRef::Ready { id, version_name } => Some((id.clone(), version_name.clone())),
            _ => None,
        })
        .collect();
    for id in ids {
        if versions.contains_key(id) {
            continue;
        }
        match ctx.catalog.bundle(id.as_str()).await {
            Ok(bundle) => {
                versions.insert(id.clone(), bundle.version_name);
            }
            Err(CatalogError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(versions)
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
                rollouts: BTreeMap::new(),
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
            assigned_at: Default::default(),
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
    fn rollout_plans_come_from_the_spec_with_the_domains_defaults() {
        use crate::operator::crd::ChannelRolloutSpec;
        let mut spec = release(&[("production", "web-1-4-0")]);
        spec.spec.rollouts.insert(
            "production".into(),
            ChannelRolloutSpec {
                steps: Some(vec![25.0, 100.0]),
                interval: Some("1m30s".into()),
                ..ChannelRolloutSpec::default()
            },
        );
        let bundles = BTreeMap::from([("web-1-4-0".to_string(), ready("1.4.0"))]);
        let desired = desired_release(&spec, &bundles).unwrap();
        let plan = &desired.rollouts[&ChannelName::parse("production").unwrap()];
        assert_eq!(plan.steps, [2_500, 10_000]);
        assert_eq!(plan.interval, std::time::Duration::from_secs(90));
        assert_eq!(
            plan,
            &crate::domain::rollout::RolloutSpec {
                steps: Some(vec![25.0, 100.0]),
                interval: Some("1m30s".into()),
                ..Default::default()
            }
            .plan()
            .unwrap(),
            "what the spec leaves out, the domain fills in"
        );

        for (channel, plan, field) in [
            (
                "production",
                ChannelRolloutSpec {
                    steps: Some(vec![50.0, 25.0, 100.0]),
                    ..Default::default()
                },
                "rollouts.production.steps",
            ),
            (
                "production",
                ChannelRolloutSpec {
                    interval: Some("soon".into()),
                    ..Default::default()
                },
                "rollouts.production.interval",
            ),
            (
                "production",
                ChannelRolloutSpec {
                    max_failure_rate: Some(2.0),
                    ..Default::default()
                },
                "rollouts.production.maxFailureRate",
            ),
            (
                "prodution",
                ChannelRolloutSpec::default(),
                "rollouts.prodution",
            ),
        ] {
            let mut bad = release(&[("production", "web-1-4-0")]);
            bad.spec.rollouts.insert(channel.into(), plan);
            let Err(Blocked::Spec { reason, message }) = desired_release(&bad, &bundles) else {
                panic!("{field} accepted")
            };
            assert_eq!(reason, "InvalidSpec");
            assert!(message.starts_with(field), "{message}");
        }
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
