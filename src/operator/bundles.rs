//! The `Bundle` controller: fetch the zip, check it like an upload, store and record it, and
//! report what was stored. Deleting a Bundle a Release still uses is held.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::{Api, ResourceExt};

use super::conditions::{conditions_for, Outcome};
use super::crd::{Bundle, BundleSpec, BundleStatus};
use super::{apply_status, display_name, now_rfc3339, Context, OperatorError, FINALIZER};
use crate::catalog::{CatalogError, NewBundle};
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

/// The upload the spec describes (the zip checks and checksum rules are the REST upload's).
pub fn new_bundle_of(bundle: &Bundle) -> NewBundle {
    let spec = &bundle.spec;
    let encryption = spec.encryption.as_ref();
    NewBundle {
        app_id: spec.app_id.clone(),
        version_name: spec.version_name.clone(),
        description: spec.description.clone(),
        session_key: encryption.map(|e| e.session_key.clone()),
        checksum: encryption
            .map(|e| e.checksum.clone())
            .or_else(|| spec.sha256.clone()),
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

pub async fn reconcile(bundle: Arc<Bundle>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = std::time::Instant::now();
    let api: Api<Bundle> =
        Api::namespaced(ctx.client.clone(), &bundle.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, bundle, |event| async {
        match event {
            Finalize::Apply(bundle) => apply(&bundle, &ctx, &api).await,
            Finalize::Cleanup(bundle) => cleanup(&bundle, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(e.to_string()));
    crate::metrics::global().reconcile("Bundle", result.is_ok(), started.elapsed());
    result
}

async fn apply(bundle: &Bundle, ctx: &Context, api: &Api<Bundle>) -> Result<Action, OperatorError> {
    let owner = owner_of(bundle);
    let spec = &bundle.spec;
    let existing = ctx
        .catalog
        .bundle_by_version(&spec.app_id, &spec.version_name)
        .await?;
    let (record, outcome) = match existing {
        Some(record) if record.owner.as_ref() == Some(&owner) => (Some(record), None),
        Some(record) => {
            let by = record
                .owner
                .as_ref()
                .map_or("the REST API".to_string(), |o| o.to_string());
            let message = format!(
                "{} already has a bundle named {:?} (made by {by}); choose another versionName",
                spec.app_id, spec.version_name
            );
            (
                None,
                Some(Outcome::Stalled {
                    reason: "VersionTaken".into(),
                    message,
                }),
            )
        }
        None => match fetch_and_store(bundle, ctx).await {
            Ok(record) => (Some(record), None),
            Err(Refusal::Spec(reason, message)) => (
                None,
                Some(Outcome::Stalled {
                    reason: reason.into(),
                    message,
                }),
            ),
            Err(Refusal::Transient(error)) => return Err(error),
        },
    };
    // The same state always reads the same, so a resync rewrites nothing.
    let outcome = outcome.unwrap_or_else(|| Outcome::Ready {
        message: format!(
            "stored as {}",
            record.as_ref().map_or("", |r| r.blob_key.as_str())
        ),
    });
    let status = status_for(bundle, record.as_ref(), &outcome);
    write_status(bundle, ctx, api, status, &outcome).await
}

/// Why storing failed: the spec must change, or the world must (retry).
enum Refusal {
    Spec(&'static str, String),
    Transient(OperatorError),
}

impl From<CatalogError> for Refusal {
    fn from(e: CatalogError) -> Refusal {
        match e {
            CatalogError::Invalid(m) => Refusal::Spec("InvalidBundle", m),
            CatalogError::TooLarge(m) => Refusal::Spec("TooLarge", m),
            CatalogError::Conflict(m) => Refusal::Spec("VersionTaken", m),
            other => Refusal::Transient(other.into()),
        }
    }
}

async fn fetch_and_store(bundle: &Bundle, ctx: &Context) -> Result<BundleRecord, Refusal> {
    let source = source_of(&bundle.spec).map_err(|m| Refusal::Spec("InvalidSource", m))?;
    let url = match source {
        Source::Url(url) => url,
        // An object already in our bucket: fetched through its (presigned) download URL.
        Source::BucketKey(key) => ctx
            .catalog
            .blobs()
            .download_url(&key)
            .await
            .map_err(|e| Refusal::Transient(CatalogError::from(e).into()))?,
    };
    let new = new_bundle_of(bundle);
    ctx.catalog.check_new_bundle(&new).await?;
    let response = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| Refusal::Transient(OperatorError::Fetch(format!("{url}: {e}"))))?;
    let status = response.status();
    if status.is_client_error() {
        return Err(Refusal::Spec(
            "SourceNotFound",
            format!("fetching {url} answered HTTP {status}; fix source"),
        ));
    }
    if !status.is_success() {
        return Err(Refusal::Transient(OperatorError::Fetch(format!(
            "{url} answered HTTP {status}"
        ))));
    }
    let mut file = ctx.staging.create(ctx.max_bundle_size).await?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| Refusal::Transient(OperatorError::Fetch(format!("{url}: {e}"))))?;
        file.write(&chunk).await?;
    }
    let staged = file.finish().await?;
    if let Some(expected) = &bundle.spec.sha256 {
        if !expected.eq_ignore_ascii_case(&staged.sha256) {
            return Err(Refusal::Spec(
                "ChecksumMismatch",
                format!(
                    "the zip's SHA-256 is {}, spec.sha256 says {expected}",
                    staged.sha256
                ),
            ));
        }
    }
    Ok(ctx.catalog.add_bundle(new, staged).await?)
}

async fn write_status(
    bundle: &Bundle,
    ctx: &Context,
    api: &Api<Bundle>,
    status: BundleStatus,
    outcome: &Outcome,
) -> Result<Action, OperatorError> {
    apply_status(ctx, api, bundle, bundle.status.as_ref(), status, outcome).await
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
        Err(CatalogError::Conflict(message)) => {
            let outcome = Outcome::Stalled {
                reason: "DeletionBlocked".into(),
                message: message.clone(),
            };
            let status = status_for(bundle, Some(&record), &outcome);
            write_status(bundle, ctx, api, status, &outcome).await?;
            // Keeps the finalizer: deletion waits until no release uses the bundle.
            Err(OperatorError::Catalog(CatalogError::Conflict(message)))
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
        assert_eq!(new.checksum.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(new.session_key, None);
    }
}
