//! The summary `capgo-server migrate` prints at the end of a run from the seed.

use std::fmt;

use crate::domain::seed::{KeptBecause, SeedBundle, SeedRelease};
use crate::domain::RecordId;
use crate::store::seed::Unreadable;

#[derive(Debug, Default)]
struct Counts {
    copied: usize,
    already_here: usize,
    duplicates: usize,
    not_migrated: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.copied + self.already_here + self.duplicates + self.not_migrated
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in the seed: {} copied, {} already here, {} duplicate(s), {} not migrated",
            self.total(),
            self.copied,
            self.already_here,
            self.duplicates,
            self.not_migrated
        )
    }
}

/// What a run did, record by record where it matters.
#[derive(Debug, Default)]
pub struct Report {
    source: String,
    bundles: Counts,
    releases: Counts,
    duplicates: Vec<String>,
    notes: Vec<String>,
    differences: Vec<String>,
    not_migrated: Vec<String>,
    stopped: Option<String>,
}

fn bundle_name(bundle: &SeedBundle) -> String {
    format!(
        "bundle {} ({} {})",
        bundle.id, bundle.app_id, bundle.version_name
    )
}

fn release_name(release: &SeedRelease) -> String {
    format!("release {} ({})", release.id, release.describe())
}

/// `<record>: kept <kind> <kept> of the same <shared>, because <why>`.
fn duplicate_line(
    record: &str,
    kind: &str,
    kept: &RecordId,
    shared: &str,
    because: KeptBecause,
) -> String {
    format!(
        "{record}: kept {kind} {kept} of the same {shared}, because {}",
        because.as_str()
    )
}

impl Report {
    pub fn new(database: &str, bucket: &str) -> Report {
        Report {
            source: format!("the seed's database {database:?} and bucket {bucket:?}"),
            ..Report::default()
        }
    }

    /// Records not migrated (duplicates are not counted: another record stands for them).
    pub fn not_migrated(&self) -> usize {
        self.not_migrated.len()
    }

    pub fn unreadable(&mut self, bundles: &[Unreadable], releases: &[Unreadable]) {
        for (list, counts) in [(bundles, &mut self.bundles), (releases, &mut self.releases)] {
            for u in list {
                counts.not_migrated += 1;
                self.not_migrated.push(format!(
                    "{} document {}: not as the seed writes it: {}",
                    u.collection, u.id, u.problem
                ));
            }
        }
    }

    pub fn bundle_copied(&mut self) {
        self.bundles.copied += 1;
    }

    pub fn bundle_already_here(&mut self) {
        self.bundles.already_here += 1;
    }

    pub fn bundle_duplicate(&mut self, bundle: &SeedBundle, kept: &RecordId, because: KeptBecause) {
        self.bundles.duplicates += 1;
        let line = duplicate_line(
            &bundle_name(bundle),
            "bundle",
            kept,
            "version name",
            because,
        );
        self.duplicates.push(line);
    }

    pub fn bundle_not_migrated(&mut self, bundle: &SeedBundle, why: &str) {
        self.bundles.not_migrated += 1;
        self.not_migrated
            .push(format!("{}: {why}", bundle_name(bundle)));
    }

    pub fn release_copied(&mut self) {
        self.releases.copied += 1;
    }

    pub fn release_already_here(&mut self, release: &SeedRelease, differences: &[String]) {
        self.releases.already_here += 1;
        for difference in differences {
            self.differences
                .push(format!("{}: {difference}", release_name(release)));
        }
    }

    pub fn release_duplicate(
        &mut self,
        release: &SeedRelease,
        kept: &RecordId,
        because: KeptBecause,
    ) {
        self.releases.duplicates += 1;
        let line = duplicate_line(
            &release_name(release),
            "release",
            kept,
            "native build",
            because,
        );
        self.duplicates.push(line);
    }

    pub fn release_note(&mut self, release: &SeedRelease, note: &str) {
        self.notes
            .push(format!("{}: {note}", release_name(release)));
    }

    pub fn release_not_migrated(&mut self, release: &SeedRelease, why: &str) {
        self.releases.not_migrated += 1;
        self.not_migrated
            .push(format!("{}: {why}", release_name(release)));
    }

    pub fn stopped(&mut self, why: String) {
        self.stopped = Some(why);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Migration from {}", self.source)?;
        writeln!(f, "  bundles:  {}", self.bundles)?;
        writeln!(f, "  releases: {}", self.releases)?;
        let sections = [
            ("Duplicates the seed allowed (one kept of each):", &self.duplicates),
            ("Notes:", &self.notes),
            (
                "Changed in the seed since an earlier run (not applied: the migration only adds; change them here):",
                &self.differences,
            ),
            ("Not migrated:", &self.not_migrated),
        ];
        for (title, lines) in sections {
            if lines.is_empty() {
                continue;
            }
            writeln!(f, "{title}")?;
            for line in lines {
                writeln!(f, "  - {line}")?;
            }
        }
        match &self.stopped {
            Some(why) => write!(
                f,
                "Stopped: {why}\nRun the migration again once that is fixed: it continues where it stopped."
            ),
            None if self.not_migrated.is_empty() => write!(
                f,
                "Done: everything the seed holds is here. Running it again adds nothing."
            ),
            None => write!(
                f,
                "Done, except the records under \"Not migrated\": fix them (in the seed, or here) and run again; what was migrated is skipped."
            ),
        }
    }
}
