//! The `Bundle` controller: fetch the zip, hand it to the catalog's ingest path (the same
//! checks as a REST upload), and report what was stored. Deleting a Bundle a Release still
//! uses is held.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::conditions::{conditions_for, Outcome};
use super::crd::{Bundle, BundleSpec, BundleStatus, Release};
use super::fetch::FetchError;
use super::{
    actor_of, apply_status, display_name, now_rfc3339, report_denial, with_finalizer, Context,
    Failure, OperatorError,
};
use crate::catalog::{CatalogError, ExpectedChecksum, NewBundle, SourceError};
use crate::domain::{Actor, Bundle as BundleRecord, ResourceRef};

/// The owner marker of records made from this resource.
pub fn owner_of(bundle: &Bundle) -> ResourceRef {
    ResourceRef::new(
        "Bundle",
        &bundle.namespace().unwrap_or_default(),
        &bundle.name_any(),
    )
}

/// Where to fetch the zip from, or why the spec cannot say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    BucketKey(String),
}

/// Checks the spec's `source` (exactly one of `url` and `bucketKey`).
pub fn source_of(spec: &BundleSpec) -> Result<Source, String> {
    match (&spec.source.url, &spec.source.bucket_key) {
        (Some(url), None) if url.starts_with("https://") || url.starts_with("http://") => {
            Ok(Source::Url(url.clone()))
        }
        (Some(url), None) => Err(format!("source.url {url:?} must be an http(s) URL")),
        (None, Some(key)) if !key.is_empty() => Ok(Source::BucketKey(key.clone())),
        _ => Err("set exactly one of source.url and source.bucketKey".into()),
    }
}

/// The upload the spec describes (the checks and checksum rules are the REST upload's).
pub fn new_bundle_of(bundle: &Bundle) -> NewBundle {
    let spec = &bundle.spec;
    let encryption = spec.encryption.as_ref();
    NewBundle {
        app_id: spec.app_id.clone(),
        version_name: spec.version_name.clone(),
        description: spec.description.clone(),
        link: spec.link.clone(),
        min_update_version: spec.min_update_version.clone(),
        expected_checksum: spec.sha256.clone().map(|value| ExpectedChecksum {
            value,
            field: "spec.sha256",
        }),
        session_key: encryption.map(|e| e.session_key.clone()),
        encrypted_checksum: encryption.map(|e| e.checksum.clone()),
        key_id: encryption.and_then(|e| e.key_id.clone()),
        owner: Some(owner_of(bundle)),
    }
}

/// The status that describes `record` (or why there is none) at the resource's generation.
pub fn status_for(
    bundle: &Bundle,
    record: Option<&BundleRecord>,
    outcome: &Outcome,
) -> BundleStatus {
    let previous = bundle
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = bundle.metadata.generation.unwrap_or_default();
    BundleStatus {
        observed_generation: generation,
        conditions: conditions_for(outcome, generation, previous, &now_rfc3339()),
        bundle_id: record.map(|r| r.id.to_string()),
        checksum: record.map(|r| r.sha256.clone()),
        size: record.map(|r| r.size),
        stored_key: record.map(|r| r.blob_key.clone()),
    }
}

/// The Bundles `release` names, so a deletion the Release held proceeds as soon as it lets go.
pub fn named_by(release: &Release) -> Vec<ObjectRef<Bundle>> {
    let namespace = release.namespace().unwrap_or_default();
    super::releases::bundle_names(&release.spec)
        .iter()
        .map(|name| ObjectRef::new(name).within(&namespace))
        .collect()
}

pub async fn reconcile(bundle: Arc<Bundle>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = std::time::Instant::now();
    let api: Api<Bundle> =
        Api::namespaced(ctx.client.clone(), &bundle.namespace().unwrap_or_default());
    let (ctx, api_ref) = (ctx.as_ref(), &api);
    let result = with_finalizer(
        &api,
        bundle.clone(),
        |bundle| async move { apply(&bundle, ctx, api_ref).await },
        |bundle| async move { cleanup(&bundle, ctx, api_ref).await },
    )
    .await;
    if let Some(denied) = result.as_ref().err().and_then(OperatorError::denied) {
        report_denial(ctx, &api, bundle.as_ref(), bundle.status.as_ref(), &denied).await;
    }
    crate::metrics::global().reconcile("Bundle", result.is_ok(), started.elapsed());
    result
}

async fn apply(bundle: &Bundle, ctx: &Context, api: &Api<Bundle>) -> Result<Action, OperatorError> {
    let stored = match ctx
        .catalog
        .existing_bundle_for(&new_bundle_of(bundle), &actor_of(bundle, owner_of(bundle)))
        .await
    {
        Ok(Some(record)) => Ok(record),
        Ok(None) => fetch_and_store(bundle, ctx).await,
        Err(e) => Err(e.into()),
    };
    // An encrypted bundle of an app without a registered key was stored unchecked: say so.
    let stored = match stored {
        Ok(record) => match ctx.catalog.encryption_note(&record).await {
            Ok(note) => Ok((record, note)),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let (record, outcome) = match stored {
        // The same state always reads the same, so a resync rewrites nothing.
        Ok((record, note)) => {
            let mut message = format!("stored as {}", record.blob_key);
            if let Some(note) = note {
                message = format!("{message}; {note}");
            }
            (Some(record), Outcome::Ready { message })
        }
        Err(Failure::Stalled(outcome)) => (None, outcome),
        Err(Failure::Retry(error)) => return Err(error),
    };
    let status = status_for(bundle, record.as_ref(), &outcome);
    apply_status(ctx, api, bundle, bundle.status.as_ref(), status, &outcome).await
}

async fn fetch_and_store(bundle: &Bundle, ctx: &Context) -> Result<BundleRecord, Failure> {
    let source = source_of(&bundle.spec).map_err(|message| {
        Failure::Stalled(Outcome::Stalled {
            reason: "InvalidSource".into(),
            message,
        })
    })?;
    let new = new_bundle_of(bundle);
    let url = match source {
        Source::BucketKey(key) => return Ok(ctx.catalog.ingest_stored_object(new, &key).await?),
        Source::Url(url) => url,
    };
    ctx.catalog.check_new_bundle(&new).await?;
    let fetch_failed = |source: crate::error::BoxError| {
        Failure::Retry(OperatorError::Fetch {
            url: url.clone(),
            source,
        })
    };
    let response = match ctx.sources.get(&url).await {
        Ok(response) => response,
        Err(FetchError::Refused(refused)) => {
            return Err(Failure::Stalled(Outcome::Stalled {
                reason: "SourceRefused".into(),
                message: format!("source.url {url}: {refused}"),
            }))
        }
        Err(FetchError::Transport(e)) => return Err(fetch_failed(e.into())),
    };
    let status = response.status();
    if status.is_redirection() {
        // reqwest follows http(s) redirects only; whatever Location said is not echoed.
        return Err(Failure::Stalled(Outcome::Stalled {
            reason: "SourceRefused".into(),
            message: format!(
                "source.url {url}: answered HTTP {status} with a redirect that is not followed \
                 (only http and https redirects are)"
            ),
        }));
    }
    if status.is_client_error() {
        return Err(Failure::Stalled(Outcome::Stalled {
            reason: "SourceNotFound".into(),
            message: format!("fetching {url} answered HTTP {status}; fix source"),
        }));
    }
    if !status.is_success() {
        return Err(fetch_failed(format!("HTTP {status}").into()));
    }
    match ctx.catalog.ingest(new, response.bytes_stream()).await {
        Ok(record) => Ok(record),
        Err(SourceError::Source(e)) => Err(fetch_failed(e.into())),
        Err(SourceError::Catalog(e)) => Err(e.into()),
    }
}

async fn cleanup(
    bundle: &Bundle,
    ctx: &Context,
    api: &Api<Bundle>,
) -> Result<Action, OperatorError> {
    let owner = owner_of(bundle);
    let spec = &bundle.spec;
    let Some(record) = ctx
        .catalog
        .bundle_by_version(&spec.app_id, &spec.version_name)
        .await?
    else {
        return Ok(Action::await_change()); // already gone
    };
    if record.owner.as_ref() != Some(&owner) {
        return Ok(Action::await_change()); // never ours: nothing to remove
    }
    match ctx
        .catalog
        .delete_bundle(record.id.as_str(), &Actor::Resource(owner))
        .await
    {
        Ok(_) | Err(CatalogError::NotFound(_)) => {
            tracing::info!(
                bundle = display_name(bundle),
                "bundle record and stored object removed"
            );
            Ok(Action::await_change())
        }
        Err(CatalogError::InUse(message)) => {
            let outcome = Outcome::Stalled {
                reason: "DeletionBlocked".into(),
                message: message.clone(),
            };
            let status = status_for(bundle, Some(&record), &outcome);
            apply_status(ctx, api, bundle, bundle.status.as_ref(), status, &outcome).await?;
            // Keeps the finalizer: deletion waits until no release uses the bundle.
            Err(OperatorError::DeletionHeld(message))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::BundleSource;

    fn spec(url: Option<&str>, key: Option<&str>) -> BundleSpec {
        BundleSpec {
            app_id: "com.example.app".into(),
            version_name: "1.0.1".into(),
            description: String::new(),
            link: None,
            min_update_version: None,
            source: BundleSource {
                url: url.map(Into::into),
                bucket_key: key.map(Into::into),
            },
            sha256: None,
            encryption: None,
        }
    }

    #[test]
    fn exactly_one_source() {
        assert_eq!(
            source_of(&spec(Some("https://cdn/x.zip"), None)),
            Ok(Source::Url("https://cdn/x.zip".into()))
        );
        assert_eq!(
            source_of(&spec(None, Some("uploads/x.zip"))),
            Ok(Source::BucketKey("uploads/x.zip".into()))
        );
        assert!(source_of(&spec(None, None)).is_err());
        assert!(source_of(&spec(Some("https://a"), Some("b"))).is_err());
        assert!(source_of(&spec(Some("ftp://a"), None))
            .unwrap_err()
            .contains("http(s)"));
    }

    #[test]
    fn the_upload_carries_the_owner_and_the_expected_checksum() {
        let mut resource = Bundle::new("web-1-0-1", spec(Some("https://cdn/x.zip"), None));
        resource.metadata.namespace = Some("apps".into());
        resource.spec.sha256 = Some("ab".repeat(32));
        let new = new_bundle_of(&resource);
        assert_eq!(
            new.owner,
            Some(ResourceRef::new("Bundle", "apps", "web-1-0-1"))
        );
        assert_eq!(
            new.expected_checksum.map(|c| (c.value, c.field)),
            Some(("ab".repeat(32), "spec.sha256"))
        );
        assert_eq!(new.session_key, None);
    }

    #[test]
    fn the_upload_carries_the_link_and_the_minimum_native_version() {
        let mut resource = Bundle::new("web-1-0-1", spec(Some("https://cdn/x.zip"), None));
        resource.spec.link = Some("https://example.com/notes/1.0.1".into());
        resource.spec.min_update_version = Some("1.2.0".into());
        let new = new_bundle_of(&resource);
        assert_eq!(new.link.as_deref(), Some("https://example.com/notes/1.0.1"));
        assert_eq!(new.min_update_version.as_deref(), Some("1.2.0"));
    }
}
