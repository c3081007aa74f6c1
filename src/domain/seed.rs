//! The seed's records (tanapoln/capgo-server, the Go server this grows from) and the rules that
//! bring them into this server's model: where a bundle's object is, which of the duplicates
//! the seed allowed is kept, and what a seed release becomes. Pure: `capgo-server migrate`
//! (`src/migrate`) reads the seed and writes through the catalog around these decisions.

use std::collections::{HashMap, HashSet};

use super::{Bundle, RecordId, Release, UnixMillis};

/// A document of the seed's `bundles` collection (every field but `signature`, always empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedBundle {
    pub id: RecordId,
    pub app_id: String,
    pub version_name: String,
    pub description: String,
    /// CRC32 of the object (`%08x`), computed by the seed at upload.
    pub crc_checksum: String,
    /// The object's address; the seed stored no key (see [`object_key`]).
    pub public_download_url: String,
    pub created_at: UnixMillis,
}

/// A seed release's `active_bundle_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedActive {
    /// `null` or absent: its devices got the builtin bundle.
    None,
    /// The zero ObjectId, which the seed read as "no active bundle" too.
    Zero,
    Bundle(RecordId),
}

/// A document of the seed's `releases` collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRelease {
    pub id: RecordId,
    pub platform: String,
    pub app_id: String,
    pub version_name: String,
    pub version_code: String,
    /// `released_date` (BSON name, with a d): the API's `release_date`.
    pub released_date: Option<UnixMillis>,
    pub builtin_bundle_id: RecordId,
    pub active: SeedActive,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// (platform, app id, native version name, native version code): what identifies a native
/// build, compared as devices send it (the platform in lower case, as the seed stored it).
type BuildKey = (String, String, String, String);

impl SeedRelease {
    fn build_key(&self) -> BuildKey {
        (
            self.platform.trim().to_ascii_lowercase(),
            self.app_id.clone(),
            self.version_name.clone(),
            self.version_code.clone(),
        )
    }

    /// `android com.example.app 1.0.0 (1)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} ({})",
            self.platform, self.app_id, self.version_name, self.version_code
        )
    }
}

fn build_key_of(release: &Release) -> BuildKey {
    (
        release.key.platform.as_str().to_string(),
        release.key.app_id.clone(),
        release.key.version_name.clone(),
        release.key.version_code.clone(),
    )
}

/// The key, in `bucket`, of the object a seed bundle's `public_download_url` names. The seed
/// recorded the S3 SDK's upload location: path-style `<S3_BASE_ENDPOINT>/<bucket>/<key>`, or
/// virtual-hosted `https://<bucket>.s3.<region>.amazonaws.com/<key>`, the key percent-encoded.
/// The host is not compared: the seed may have recorded an address only its own network knows.
pub fn object_key(public_download_url: &str, bucket: &str) -> Result<String, String> {
    let url = url::Url::parse(public_download_url)
        .map_err(|e| format!("public_download_url {public_download_url:?} is not a URL: {e}"))?;
    let path = url.path();
    let encoded = match path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(bucket))
        .and_then(|p| p.strip_prefix('/'))
    {
        Some(key) => key,
        None if url
            .host_str()
            .is_some_and(|host| host.starts_with(&format!("{bucket}."))) =>
        {
            path.trim_start_matches('/')
        }
        None => {
            return Err(format!(
                "public_download_url {public_download_url:?} names no object of bucket {bucket:?} \
                 (neither <endpoint>/{bucket}/<key> nor https://{bucket}.<host>/<key>): is \
                 --from-seed-bucket the seed's S3_BUCKET?"
            ))
        }
    };
    let key = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|e| format!("public_download_url {public_download_url:?}: {e}"))?;
    if key.is_empty() {
        return Err(format!(
            "public_download_url {public_download_url:?} names the bucket, not an object"
        ));
    }
    Ok(key.into_owned())
}

/// What happens to one seed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleStep {
    /// Copy its object and record it under its seed id.
    Copy,
    /// An earlier run brought it over: nothing to do.
    AlreadyHere,
    /// Not brought over: its app has (or gets) another bundle of that version name, `kept`,
    /// and devices tell bundles apart by name. References to it lead to `kept`.
    Duplicate {
        kept: RecordId,
        because: KeptBecause,
    },
}

/// Why, of bundles sharing an app and version name, `kept` is the one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptBecause {
    /// An earlier run brought it over.
    MigratedBefore,
    /// It was made here, not by the migration.
    MadeHere,
    /// A release serves it (its `active_bundle_id`).
    Served,
    /// A release has it as its builtin bundle.
    Builtin,
    /// No release uses any of them: it is the newest.
    Newest,
    /// The seed's devices were answered from the first release of that native build.
    FirstFound,
}

impl KeptBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            KeptBecause::MigratedBefore => "an earlier run brought it over",
            KeptBecause::MadeHere => "it was made on this server",
            KeptBecause::Served => "a release serves it",
            KeptBecause::Builtin => "a release has it as its builtin bundle",
            KeptBecause::Newest => "it is the newest",
            KeptBecause::FirstFound => {
                "the seed answered devices from it (the first one found; the seed ran without its unique index)"
            }
        }
    }
}

/// One step per seed bundle (same order): of the bundles of one app and version name, one is
/// kept: the one here already, else the one a release serves, else one a release has as its
/// builtin bundle, else the newest.
pub fn plan_bundles(
    seed: &[SeedBundle],
    releases: &[SeedRelease],
    here: &[Bundle],
) -> Vec<BundleStep> {
    let served: HashSet<&RecordId> = releases
        .iter()
        .filter_map(|r| match &r.active {
            SeedActive::Bundle(id) => Some(id),
            _ => None,
        })
        .collect();
    let builtin: HashSet<&RecordId> = releases.iter().map(|r| &r.builtin_bundle_id).collect();
    let here_ids: HashSet<&RecordId> = here.iter().map(|b| &b.id).collect();
    let here_by_name: HashMap<(&str, &str), &RecordId> = here
        .iter()
        .map(|b| ((b.app_id.as_str(), b.version_name.as_str()), &b.id))
        .collect();
    let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (index, bundle) in seed.iter().enumerate() {
        groups
            .entry((&bundle.app_id, &bundle.version_name))
            .or_default()
            .push(index);
    }
    let mut steps = vec![BundleStep::AlreadyHere; seed.len()];
    for (name, members) in groups {
        let (kept, because) =
            if let Some(&i) = members.iter().find(|&&i| here_ids.contains(&seed[i].id)) {
                (seed[i].id.clone(), KeptBecause::MigratedBefore)
            } else if let Some(&id) = here_by_name.get(&name) {
                (id.clone(), KeptBecause::MadeHere)
            } else {
                let rank = |i: &usize| {
                    let b = &seed[*i];
                    (
                        served.contains(&b.id),
                        builtin.contains(&b.id),
                        b.created_at,
                        &b.id,
                    )
                };
                let best = *members
                    .iter()
                    .max_by_key(|i| rank(i))
                    .expect("groups are not empty");
                let b = &seed[best];
                let because = if served.contains(&b.id) {
                    KeptBecause::Served
                } else if builtin.contains(&b.id) {
                    KeptBecause::Builtin
                } else {
                    KeptBecause::Newest
                };
                steps[best] = BundleStep::Copy;
                (b.id.clone(), because)
            };
        for i in members {
            if seed[i].id != kept {
                steps[i] = BundleStep::Duplicate {
                    kept: kept.clone(),
                    because,
                };
            }
        }
    }
    steps
}

/// Where a reference to a seed bundle leads once the bundles were brought over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRef {
    /// To this bundle here; `instead_of` is the duplicate it stands for, if it does.
    Here {
        id: RecordId,
        instead_of: Option<RecordId>,
    },
    /// The bundle is not here, for this reason.
    Missing(String),
}

/// Where each seed bundle id leads, given the steps and, for each `Copy`, whether the copy
/// worked (`Err` says why not). Ids that are no seed bundle are absent.
pub fn resolve_bundles(
    seed: &[SeedBundle],
    steps: &[BundleStep],
    copied: &HashMap<RecordId, Result<(), String>>,
) -> HashMap<RecordId, BundleRef> {
    let direct = |id: &RecordId, step: &BundleStep| -> Option<BundleRef> {
        match step {
            BundleStep::AlreadyHere => Some(BundleRef::Here {
                id: id.clone(),
                instead_of: None,
            }),
            BundleStep::Copy => Some(match copied.get(id) {
                Some(Ok(())) => BundleRef::Here {
                    id: id.clone(),
                    instead_of: None,
                },
                Some(Err(why)) => BundleRef::Missing(why.clone()),
                None => BundleRef::Missing("the run stopped before copying it".into()),
            }),
            BundleStep::Duplicate { .. } => None,
        }
    };
    let mut refs: HashMap<RecordId, BundleRef> = seed
        .iter()
        .zip(steps)
        .filter_map(|(b, step)| Some((b.id.clone(), direct(&b.id, step)?)))
        .collect();
    for (bundle, step) in seed.iter().zip(steps) {
        if let BundleStep::Duplicate { kept, .. } = step {
            let to = match refs.get(kept) {
                Some(BundleRef::Here { id, .. }) => BundleRef::Here {
                    id: id.clone(),
                    instead_of: Some(bundle.id.clone()),
                },
                Some(BundleRef::Missing(why)) => BundleRef::Missing(format!(
                    "the bundle kept of its duplicates, {kept}, is not here: {why}"
                )),
                // Kept because it was made here.
                None => BundleRef::Here {
                    id: kept.clone(),
                    instead_of: Some(bundle.id.clone()),
                },
            };
            refs.insert(bundle.id.clone(), to);
        }
    }
    refs
}

/// What happens to one seed release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStep {
    /// Record it under its seed id with this builtin bundle and, when the seed had an active
    /// bundle, `production` serving `production`.
    Copy {
        builtin: RecordId,
        production: Option<RecordId>,
    },
    /// An earlier run brought it over; `differences` says what changed in the seed since
    /// (not applied: the migration only adds).
    AlreadyHere { differences: Vec<String> },
    /// Not brought over: `kept` stands for its native build.
    Duplicate {
        kept: RecordId,
        because: KeptBecause,
    },
    /// Cannot be brought over, for this reason.
    NotMigrated(String),
}

/// A release's step, with remarks on how it was mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    pub step: ReleaseStep,
    pub notes: Vec<String>,
}

/// One plan per seed release (same order). Of the releases of one native build, one is kept:
/// the one here already, else none if this server has that build already, else the first in
/// the collection's natural order (the one the seed's `/updates` found). A kept release's
/// builtin bundle and active bundle must be here; a dangling or missing one keeps it out
/// (its devices then keep the bundle they run, as they did when the seed answered "bundle is
/// not found"), and the zero ObjectId is no active bundle, as the seed read it.
pub fn plan_releases(
    seed: &[SeedRelease],
    bundles: &HashMap<RecordId, BundleRef>,
    here: &[Release],
) -> Vec<ReleasePlan> {
    let here_by_id: HashMap<&RecordId, &Release> = here.iter().map(|r| (&r.id, r)).collect();
    let here_by_key: HashMap<BuildKey, &RecordId> =
        here.iter().map(|r| (build_key_of(r), &r.id)).collect();
    let mut kept_by_key: HashMap<BuildKey, (RecordId, KeptBecause)> = HashMap::new();
    for release in seed.iter().filter(|r| here_by_id.contains_key(&r.id)) {
        kept_by_key.insert(
            release.build_key(),
            (release.id.clone(), KeptBecause::MigratedBefore),
        );
    }
    seed.iter()
        .map(|release| {
            let key = release.build_key();
            let (kept, because) = kept_by_key
                .entry(key.clone())
                .or_insert_with(|| match here_by_key.get(&key) {
                    Some(&id) => (id.clone(), KeptBecause::MadeHere),
                    None => (release.id.clone(), KeptBecause::FirstFound),
                })
                .clone();
            if kept != release.id {
                return ReleasePlan {
                    step: ReleaseStep::Duplicate { kept, because },
                    notes: Vec::new(),
                };
            }
            let mut notes = Vec::new();
            let mapped = map_release(release, bundles, &mut notes);
            let step = match (here_by_id.get(&release.id), mapped) {
                (Some(existing), Ok((builtin, production))) => ReleaseStep::AlreadyHere {
                    differences: differences(release, existing, &builtin, production.as_ref()),
                },
                (Some(_), Err(_)) => ReleaseStep::AlreadyHere {
                    differences: Vec::new(),
                },
                (None, Ok((builtin, production))) => ReleaseStep::Copy {
                    builtin,
                    production,
                },
                (None, Err(why)) => ReleaseStep::NotMigrated(why),
            };
            if !matches!(step, ReleaseStep::Copy { .. }) {
                notes.clear();
            }
            ReleasePlan { step, notes }
        })
        .collect()
}

/// A kept release's builtin and production bundles here.
fn map_release(
    release: &SeedRelease,
    bundles: &HashMap<RecordId, BundleRef>,
    notes: &mut Vec<String>,
) -> Result<(RecordId, Option<RecordId>), String> {
    let mut follow = |field: &str, id: &RecordId| -> Result<RecordId, String> {
        match bundles.get(id) {
            Some(BundleRef::Here {
                id: here,
                instead_of,
            }) => {
                if instead_of.is_some() {
                    notes.push(format!(
                        "its {field} {id} is a duplicate of its version name: uses the kept bundle {here}"
                    ));
                }
                Ok(here.clone())
            }
            Some(BundleRef::Missing(why)) => Err(format!(
                "its {field} {id} is not here: {why} (until it is, this build's devices get \
                 \"no_release\" and keep the bundle they run)"
            )),
            None => Err(format!(
                "its {field} {id} is no bundle of the seed{}",
                if field == "active_bundle_id" {
                    " (the seed answered its devices \"bundle is not found\"; here they get \
                     \"no_release\": either way they keep the bundle they run): point it at a \
                     bundle in the seed and run again, or create the release here"
                } else {
                    ""
                }
            )),
        }
    };
    let builtin = follow("builtin_bundle_id", &release.builtin_bundle_id)?;
    let production = match &release.active {
        SeedActive::None => None,
        SeedActive::Zero => {
            notes.push(
                "its active_bundle_id is the zero ObjectId: no active bundle, as the seed read it \
                 (its devices get the builtin bundle)"
                    .into(),
            );
            None
        }
        SeedActive::Bundle(id) => Some(follow("active_bundle_id", id)?),
    };
    Ok((builtin, production))
}

/// What differs between a release brought over earlier and its seed record now.
fn differences(
    seed: &SeedRelease,
    here: &Release,
    builtin: &RecordId,
    production: Option<&RecordId>,
) -> Vec<String> {
    let mut found = Vec::new();
    if &here.builtin_bundle_id != builtin {
        found.push(format!(
            "builtin bundle: {builtin} in the seed, {} here",
            here.builtin_bundle_id
        ));
    }
    if here.production_bundle() != production {
        let show = |id: Option<&RecordId>| id.map_or("none".to_string(), ToString::to_string);
        found.push(format!(
            "active bundle: {} in the seed, {} here",
            show(production),
            show(here.production_bundle())
        ));
    }
    if here.release_date != seed.released_date {
        let show = |d: Option<UnixMillis>| d.map_or("none".to_string(), super::rfc3339);
        found.push(format!(
            "release date: {} in the seed, {} here",
            show(seed.released_date),
            show(here.release_date)
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::{ChannelName, Platform, ReleaseKey};

    fn id(n: u32) -> RecordId {
        RecordId::from_stored(format!("{n:024x}"))
    }

    fn bundle(n: u32, version: &str, created_at: UnixMillis) -> SeedBundle {
        SeedBundle {
            id: id(n),
            app_id: "com.example.app".into(),
            version_name: version.into(),
            description: String::new(),
            crc_checksum: "00000000".into(),
            public_download_url: format!("http://s3/b/2024-09/{version}_{n}.zip"),
            created_at,
        }
    }

    fn release(n: u32, code: &str, builtin: u32, active: SeedActive) -> SeedRelease {
        SeedRelease {
            id: id(n),
            platform: "android".into(),
            app_id: "com.example.app".into(),
            version_name: "1.0.0".into(),
            version_code: code.into(),
            released_date: None,
            builtin_bundle_id: id(builtin),
            active,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// The record a successful copy makes of a seed bundle.
    fn copied(b: &SeedBundle) -> Bundle {
        Bundle {
            id: b.id.clone(),
            app_id: b.app_id.clone(),
            version_name: b.version_name.clone(),
            description: b.description.clone(),
            link: None,
            min_update_version: None,
            sha256: String::new(),
            crc32: b.crc_checksum.clone(),
            size: 1,
            blob_key: Bundle::blob_key_for(&b.id),
            encryption: None,
            created_at: b.created_at,
            owner: None,
        }
    }

    fn copied_release(
        r: &SeedRelease,
        builtin: &RecordId,
        production: Option<&RecordId>,
    ) -> Release {
        let mut channels = BTreeMap::new();
        if let Some(p) = production {
            channels.insert(ChannelName::default_channel(), p.clone());
        }
        Release {
            id: r.id.clone(),
            key: ReleaseKey {
                platform: r.platform.parse::<Platform>().unwrap(),
                app_id: r.app_id.clone(),
                version_name: r.version_name.clone(),
                version_code: r.version_code.clone(),
            },
            builtin_bundle_id: builtin.clone(),
            channels,
            // The seed does not say when its bundles were activated.
            assigned_at: BTreeMap::new(),
            release_date: r.released_date,
            created_at: r.created_at,
            updated_at: r.updated_at,
            owner: None,
        }
    }

    #[test]
    fn object_keys_from_path_style_and_virtual_hosted_urls() {
        assert_eq!(
            object_key(
                "http://minio:9000/capgo/2024-09/1.0.0_crmiu8if78gh14g0000g.zip",
                "capgo"
            ),
            Ok("2024-09/1.0.0_crmiu8if78gh14g0000g.zip".into())
        );
        assert_eq!(
            object_key(
                "https://capgo.s3.eu-west-1.amazonaws.com/2024-10/1.0.3%20beta_x.zip",
                "capgo"
            ),
            Ok("2024-10/1.0.3 beta_x.zip".into())
        );
        assert_eq!(
            object_key("http://127.0.0.1:9000/capgo/2024-10/a/b_x.zip", "capgo"),
            Ok("2024-10/a/b_x.zip".into()),
            "a / in a version name made folders"
        );
        assert!(object_key("http://minio:9000/other/2024-09/x.zip", "capgo")
            .unwrap_err()
            .contains("--from-seed-bucket"));
        assert!(object_key("not a url", "capgo").is_err());
        assert!(object_key("http://minio:9000/capgo/", "capgo").is_err());
        assert!(object_key("http://minio:9000/capgoextra/k.zip", "capgo").is_err());
    }

    #[test]
    fn the_served_duplicate_is_kept_else_the_builtin_one_else_the_newest() {
        let seed = [
            bundle(1, "1.0.0", 10),
            bundle(2, "1.0.1", 20),
            bundle(3, "1.0.1", 30),
            bundle(4, "1.0.1", 40),
            bundle(5, "2.0.0", 50),
            bundle(6, "2.0.0", 60),
        ];
        let releases = [
            release(100, "1", 1, SeedActive::Bundle(id(3))),
            release(101, "2", 5, SeedActive::None),
        ];
        let steps = plan_bundles(&seed, &releases, &[]);
        assert_eq!(steps[0], BundleStep::Copy);
        assert_eq!(steps[2], BundleStep::Copy, "served, though not the newest");
        for i in [1, 3] {
            assert_eq!(
                steps[i],
                BundleStep::Duplicate {
                    kept: id(3),
                    because: KeptBecause::Served
                }
            );
        }
        assert_eq!(steps[4], BundleStep::Copy, "builtin, though older");
        assert_eq!(
            steps[5],
            BundleStep::Duplicate {
                kept: id(5),
                because: KeptBecause::Builtin
            }
        );
        let unused = plan_bundles(&seed[1..4], &[], &[]);
        assert_eq!(unused[2], BundleStep::Copy, "the newest");
        assert_eq!(
            unused[0],
            BundleStep::Duplicate {
                kept: id(4),
                because: KeptBecause::Newest
            }
        );
    }

    #[test]
    fn a_name_made_here_wins_and_references_follow_it() {
        let seed = [bundle(1, "1.0.0", 10)];
        let mut mine = copied(&seed[0]);
        mine.id = id(99);
        let steps = plan_bundles(&seed, &[], &[mine]);
        assert_eq!(
            steps[0],
            BundleStep::Duplicate {
                kept: id(99),
                because: KeptBecause::MadeHere
            }
        );
        let refs = resolve_bundles(&seed, &steps, &HashMap::new());
        assert_eq!(
            refs[&id(1)],
            BundleRef::Here {
                id: id(99),
                instead_of: Some(id(1))
            }
        );
    }

    #[test]
    fn releases_map_to_builtin_and_production_and_refuse_dangling_references() {
        let seed = [
            bundle(1, "1.0.0", 10),
            bundle(2, "1.0.1", 20),
            bundle(3, "1.0.1", 30),
        ];
        let releases = [
            release(100, "1", 1, SeedActive::None),
            release(101, "2", 1, SeedActive::Bundle(id(2))),
            release(102, "3", 1, SeedActive::Bundle(id(77))),
            release(103, "4", 1, SeedActive::Zero),
            release(104, "1", 3, SeedActive::Bundle(id(3))),
            release(105, "5", 78, SeedActive::None),
        ];
        let steps = plan_bundles(&seed, &releases, &[]);
        let all_copied = all_copied_map();
        let refs = resolve_bundles(&seed, &steps, &all_copied);
        let plans = plan_releases(&releases, &refs, &[]);
        assert_eq!(
            plans[0].step,
            ReleaseStep::Copy {
                builtin: id(1),
                production: None
            }
        );
        // 2 and 3 are duplicates and both served: the newest is kept.
        assert_eq!(
            plans[1].step,
            ReleaseStep::Copy {
                builtin: id(1),
                production: Some(id(3))
            }
        );
        assert!(
            plans[1].notes[0].contains("duplicate"),
            "{:?}",
            plans[1].notes
        );
        assert!(
            matches!(&plans[2].step, ReleaseStep::NotMigrated(why) if why.contains("bundle is not found"))
        );
        assert_eq!(
            plans[3].step,
            ReleaseStep::Copy {
                builtin: id(1),
                production: None
            }
        );
        assert!(plans[3].notes[0].contains("zero ObjectId"));
        assert_eq!(
            plans[4].step,
            ReleaseStep::Duplicate {
                kept: id(100),
                because: KeptBecause::FirstFound
            }
        );
        assert!(
            matches!(&plans[5].step, ReleaseStep::NotMigrated(why) if why.contains("no bundle of the seed"))
        );

        // The copy of bundle 3 failed: the release it serves stays out, with the reason.
        let mut failed = all_copied;
        failed.insert(id(3), Err("object missing".into()));
        let refs = resolve_bundles(&seed, &steps, &failed);
        let plans = plan_releases(&releases, &refs, &[]);
        assert!(
            matches!(&plans[1].step, ReleaseStep::NotMigrated(why) if why.contains("object missing"))
        );
    }

    fn all_copied_map() -> HashMap<RecordId, Result<(), String>> {
        [id(1), id(2), id(3)]
            .into_iter()
            .map(|i| (i, Ok(())))
            .collect()
    }

    #[test]
    fn a_release_brought_over_earlier_reports_what_changed_in_the_seed_since() {
        let seed = [bundle(1, "1.0.0", 10), bundle(2, "1.0.1", 20)];
        let before = release(100, "1", 1, SeedActive::None);
        let here = copied_release(&before, &id(1), None);
        let mut now = before.clone();
        now.active = SeedActive::Bundle(id(2));
        now.released_date = Some(1_700_000_000_000);
        let refs = resolve_bundles(
            &seed,
            &[BundleStep::AlreadyHere, BundleStep::AlreadyHere],
            &HashMap::new(),
        );
        let plans = plan_releases(&[now], &refs, &[here]);
        let ReleaseStep::AlreadyHere { differences } = &plans[0].step else {
            panic!("{:?}", plans[0]);
        };
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("active bundle"));
    }

    fn arb_seed() -> impl Strategy<Value = (Vec<SeedBundle>, Vec<SeedRelease>)> {
        let bundles = prop::collection::vec((0u32..4, 0i64..5), 0..12).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(n, (version, created))| bundle(n as u32, &format!("1.0.{version}"), created))
                .collect::<Vec<_>>()
        });
        let releases =
            prop::collection::vec((0u32..3, 0u32..14, 0u32..16), 0..8).prop_map(|specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(n, (code, builtin, active))| {
                        let active = match active {
                            14 => SeedActive::None,
                            15 => SeedActive::Zero,
                            b => SeedActive::Bundle(id(b)),
                        };
                        release(1000 + n as u32, &code.to_string(), builtin, active)
                    })
                    .collect::<Vec<_>>()
            });
        (bundles, releases)
    }

    /// Runs the plan with every copy working; returns the records here afterwards.
    fn apply(
        seed: &[SeedBundle],
        releases: &[SeedRelease],
        here_bundles: &mut Vec<Bundle>,
        here_releases: &mut Vec<Release>,
    ) -> (Vec<BundleStep>, Vec<ReleasePlan>) {
        let steps = plan_bundles(seed, releases, here_bundles);
        let mut copied_ok = HashMap::new();
        for (b, step) in seed.iter().zip(&steps) {
            if *step == BundleStep::Copy {
                here_bundles.push(copied(b));
                copied_ok.insert(b.id.clone(), Ok(()));
            }
        }
        let refs = resolve_bundles(seed, &steps, &copied_ok);
        let plans = plan_releases(releases, &refs, here_releases);
        for (r, plan) in releases.iter().zip(&plans) {
            if let ReleaseStep::Copy {
                builtin,
                production,
            } = &plan.step
            {
                here_releases.push(copied_release(r, builtin, production.as_ref()));
            }
        }
        (steps, plans)
    }

    proptest! {
        /// One bundle per app and version name and one release per native build end up here,
        /// duplicates point at a kept record of the same name, and a second run adds nothing.
        #[test]
        fn planning_keeps_one_per_name_and_a_second_run_adds_nothing((seed, releases) in arb_seed()) {
            let (mut bundles_here, mut releases_here) = (Vec::new(), Vec::new());
            let (steps, plans) = apply(&seed, &releases, &mut bundles_here, &mut releases_here);
            let names: HashSet<(&str, &str)> = bundles_here.iter().map(|b| (b.app_id.as_str(), b.version_name.as_str())).collect();
            prop_assert_eq!(names.len(), bundles_here.len());
            let seed_names: HashSet<(&str, &str)> = seed.iter().map(|b| (b.app_id.as_str(), b.version_name.as_str())).collect();
            prop_assert_eq!(names, seed_names);
            for (b, step) in seed.iter().zip(&steps) {
                if let BundleStep::Duplicate { kept, .. } = step {
                    let kept = bundles_here.iter().find(|k| &k.id == kept).unwrap();
                    prop_assert_eq!(&kept.version_name, &b.version_name);
                }
            }
            let keys: HashSet<BuildKey> = releases_here.iter().map(build_key_of).collect();
            prop_assert_eq!(keys.len(), releases_here.len());
            for (r, plan) in releases.iter().zip(&plans) {
                let is_here = releases_here.iter().any(|h| h.id == r.id);
                prop_assert_eq!(is_here, matches!(plan.step, ReleaseStep::Copy { .. }));
            }

            let before = (bundles_here.len(), releases_here.len());
            let (steps_again, plans_again) = apply(&seed, &releases, &mut bundles_here, &mut releases_here);
            prop_assert_eq!(before, (bundles_here.len(), releases_here.len()));
            for (first, again) in steps.iter().zip(&steps_again) {
                match (first, again) {
                    (BundleStep::Copy, BundleStep::AlreadyHere) => {}
                    (BundleStep::Duplicate { kept: a, .. }, BundleStep::Duplicate { kept: b, .. }) => prop_assert_eq!(a, b),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            for (first, again) in plans.iter().zip(&plans_again) {
                match (&first.step, &again.step) {
                    (ReleaseStep::Copy { .. }, ReleaseStep::AlreadyHere { differences }) => prop_assert!(differences.is_empty()),
                    (ReleaseStep::Duplicate { kept: a, .. }, ReleaseStep::Duplicate { kept: b, .. }) => prop_assert_eq!(a, b),
                    (ReleaseStep::NotMigrated(a), ReleaseStep::NotMigrated(b)) => prop_assert_eq!(a, b),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
