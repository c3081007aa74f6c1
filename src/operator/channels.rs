//! The `Channel` controller: converge an app's channel settings and the devices forced onto it
//! to the spec, and give them back (settings to the defaults, devices released) when the
//! resource goes.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::conditions::{conditions_for, Outcome};
use super::crd::{Channel, ChannelSpec, ChannelStatus, UpdatePolicySpec};
use super::{
    actor_of, apply_status, display_name, now_rfc3339, report_denial, with_finalizer, Context,
    Failure, OperatorError,
};
use crate::catalog::DesiredChannel;
use crate::domain::channel_policy::{ChannelRules, UpdatePolicy};
use crate::domain::names::check_app_id;
use crate::domain::targeting::parse_device_id;
use crate::domain::{Actor, ChannelName, ResourceRef};

/// The owner marker of the settings and device overrides made from this resource.
pub fn owner_of(channel: &Channel) -> ResourceRef {
    ResourceRef::new(
        "Channel",
        &channel.namespace().unwrap_or_default(),
        &channel.name_any(),
    )
}

/// The rules the spec sets, field by field.
pub fn rules_of(spec: &ChannelSpec) -> ChannelRules {
    ChannelRules {
        allow_ios: spec.allow_ios,
        allow_android: spec.allow_android,
        allow_electron: spec.allow_electron,
        allow_emulator: spec.allow_emulator,
        allow_device: spec.allow_device,
        allow_dev_build: spec.allow_dev_build,
        allow_prod_build: spec.allow_prod_build,
        update_policy: match spec.update_policy {
            UpdatePolicySpec::None => UpdatePolicy::None,
            UpdatePolicySpec::Major => UpdatePolicy::Major,
            UpdatePolicySpec::Minor => UpdatePolicy::Minor,
            UpdatePolicySpec::Patch => UpdatePolicy::Patch,
            UpdatePolicySpec::VersionNumber => UpdatePolicy::VersionNumber,
        },
        block_under_native: spec.block_under_native,
        allow_device_self_set: spec.allow_device_self_set,
    }
}

/// What the resource asks of the catalog, or (the message of) why its spec cannot work.
/// Device ids are checked by the catalog, which owns that rule.
pub fn desired_channel(channel: &Channel) -> Result<DesiredChannel, String> {
    let spec = &channel.spec;
    check_app_id(&spec.app_id).map_err(|e| e.0)?;
    let name = ChannelName::parse(&spec.channel).map_err(|e| format!("channel: {}", e.0))?;
    let owner = owner_of(channel);
    Ok(DesiredChannel {
        app_id: spec.app_id.clone(),
        channel: name,
        rules: rules_of(spec),
        devices: spec.devices.clone(),
        adopt: matches!(actor_of(channel, owner.clone()), Actor::AdoptingResource(_)),
        owner,
    })
}

/// How many distinct devices the spec forces onto the channel (ids compare lowercased, as
/// the catalog stores them); invalid ids are not counted.
pub fn device_count(spec: &ChannelSpec) -> u32 {
    let distinct: BTreeSet<String> = spec
        .devices
        .iter()
        .filter_map(|id| parse_device_id(id).ok())
        .collect();
    u32::try_from(distinct.len()).unwrap_or(u32::MAX)
}

pub async fn reconcile(channel: Arc<Channel>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = std::time::Instant::now();
    let api: Api<Channel> =
        Api::namespaced(ctx.client.clone(), &channel.namespace().unwrap_or_default());
    let (ctx, api_ref) = (ctx.as_ref(), &api);
    let result = with_finalizer(
        &api,
        channel.clone(),
        |channel| async move { apply(&channel, ctx, api_ref).await },
        |channel| async move { cleanup(&channel, ctx).await },
    )
    .await;
    if let Some(denied) = result.as_ref().err().and_then(OperatorError::denied) {
        report_denial(
            ctx,
            &api,
            channel.as_ref(),
            channel.status.as_ref(),
            &denied,
        )
        .await;
    }
    crate::metrics::global().reconcile("Channel", result.is_ok(), started.elapsed());
    result
}

async fn apply(
    channel: &Channel,
    ctx: &Context,
    api: &Api<Channel>,
) -> Result<Action, OperatorError> {
    let converged = match desired_channel(channel) {
        Ok(desired) => converge(channel, &desired, ctx).await,
        Err(message) => Err(Failure::Stalled(Outcome::Stalled {
            reason: "InvalidSpec".into(),
            message,
        })),
    };
    let previous = channel.status.clone().unwrap_or_default();
    let (devices, outcome) = match converged {
        Ok(()) => (
            device_count(&channel.spec),
            Outcome::Ready {
                message: "the channel's settings and devices are as specified".into(),
            },
        ),
        // What the catalog holds did not change: the count last reported still stands.
        Err(Failure::Stalled(outcome)) => (previous.devices, outcome),
        Err(Failure::Retry(error)) => return Err(error),
    };
    let generation = channel.metadata.generation.unwrap_or_default();
    let status = ChannelStatus {
        observed_generation: generation,
        conditions: conditions_for(&outcome, generation, &previous.conditions, &now_rfc3339()),
        devices,
    };
    apply_status(ctx, api, channel, channel.status.as_ref(), status, &outcome).await
}

async fn converge(
    channel: &Channel,
    desired: &DesiredChannel,
    ctx: &Context,
) -> Result<(), Failure> {
    if ctx.catalog.apply_channel(desired).await? {
        tracing::info!(
            channel = display_name(channel),
            app_id = desired.app_id,
            name = %desired.channel,
            "channel settings and devices converged"
        );
    }
    Ok(())
}

/// Gives back what the resource set. Independent of the spec's validity: an unparsable
/// channel name matches no stored settings, and the devices are found by owner.
async fn cleanup(channel: &Channel, ctx: &Context) -> Result<Action, OperatorError> {
    let spec = &channel.spec;
    let name = ChannelName::from_stored(spec.channel.clone());
    ctx.catalog
        .release_channel(&owner_of(channel), &spec.app_id, &name)
        .await?;
    tracing::info!(
        channel = display_name(channel),
        "channel settings reset and devices released"
    );
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn channel(spec: serde_json::Value) -> Channel {
        let mut resource: Channel = serde_json::from_value(serde_json::json!({
            "apiVersion": "capgo-server.io/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": "shop-beta", "namespace": "apps"},
            "spec": spec,
        }))
        .unwrap();
        resource.metadata.namespace = Some("apps".into());
        resource
    }

    #[test]
    fn a_spec_without_settings_asks_for_the_defaults() {
        let resource = channel(serde_json::json!({"appId": "com.example.app", "channel": "beta"}));
        let desired = desired_channel(&resource).unwrap();
        assert_eq!(desired.rules, ChannelRules::default());
        assert_eq!(desired.channel, ChannelName::parse("beta").unwrap());
        assert_eq!(desired.app_id, "com.example.app");
        assert!(desired.devices.is_empty());
        assert_eq!(
            desired.owner,
            ResourceRef::new("Channel", "apps", "shop-beta")
        );
        assert!(!desired.adopt);
    }

    #[test]
    fn every_setting_reaches_the_rules() {
        let resource = channel(serde_json::json!({
            "appId": "com.example.app", "channel": "beta",
            "allowIos": false, "allowAndroid": false, "allowElectron": false,
            "allowEmulator": false, "allowDevice": false, "allowDevBuild": false,
            "allowProdBuild": false, "updatePolicy": "version_number",
            "blockUnderNative": true, "allowDeviceSelfSet": false,
            "devices": ["Device-A", "device-a", "device-b"],
        }));
        let desired = desired_channel(&resource).unwrap();
        assert_eq!(
            desired.rules,
            ChannelRules {
                allow_ios: false,
                allow_android: false,
                allow_electron: false,
                allow_emulator: false,
                allow_device: false,
                allow_dev_build: false,
                allow_prod_build: false,
                update_policy: UpdatePolicy::VersionNumber,
                block_under_native: true,
                allow_device_self_set: false,
            }
        );
        // Passed as written (the catalog checks and lowercases them); counted once each.
        assert_eq!(desired.devices, ["Device-A", "device-a", "device-b"]);
        assert_eq!(device_count(&resource.spec), 2);
    }

    #[test]
    fn each_update_policy_maps_to_the_domains() {
        for (spelled, policy) in [
            ("none", UpdatePolicy::None),
            ("major", UpdatePolicy::Major),
            ("minor", UpdatePolicy::Minor),
            ("patch", UpdatePolicy::Patch),
            ("version_number", UpdatePolicy::VersionNumber),
        ] {
            let resource = channel(serde_json::json!({
                "appId": "com.example.app", "channel": "beta", "updatePolicy": spelled,
            }));
            assert_eq!(rules_of(&resource.spec).update_policy, policy);
            // One spelling for the spec and the domain (the REST API's).
            assert_eq!(policy.as_str(), spelled);
        }
    }

    #[test]
    fn what_slipped_past_the_schema_is_refused_with_the_field() {
        let bad_channel =
            channel(serde_json::json!({"appId": "com.example.app", "channel": "builtin"}));
        assert!(desired_channel(&bad_channel)
            .unwrap_err()
            .contains("builtin"));
        let bad_app = channel(serde_json::json!({"appId": "com example", "channel": "beta"}));
        assert!(desired_channel(&bad_app).is_err());
        let mut spaced =
            channel(serde_json::json!({"appId": "com.example.app", "channel": "beta"}));
        spaced.spec.channel = "no spaces".into();
        let message = desired_channel(&spaced).unwrap_err();
        assert!(message.starts_with("channel: "), "{message}");
    }

    #[test]
    fn the_adopt_annotation_asks_to_take_over_api_settings() {
        let mut resource =
            channel(serde_json::json!({"appId": "com.example.app", "channel": "beta"}));
        resource.metadata.annotations = Some(BTreeMap::from([(
            crate::domain::ownership::ADOPT_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
        assert!(desired_channel(&resource).unwrap().adopt);
    }
}
