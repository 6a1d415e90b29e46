//! The Parquet export against a real Postgres (a private database per test) and real
//! files: the export equals the Postgres rows row for row (deletions and blocked metrics
//! left out), corrections and deletions reach it after the next cycle, an interrupted
//! cycle leaves the old or the new partition, and a re-export never duplicates.
//! Needs Postgres from `scripts/stack up`; no broker.

mod support;

use std::path::{Path, PathBuf};

use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Date32Type, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pulseline_sinks::export::{
    DEV_EXPORT_KEY, ExportConfig, ExportError, ExportRoot, Exporter, Pseudonymizer,
};
use pulseline_testkit::s3::MotoS3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Harness;
use uuid::Uuid;

struct Fixture {
    h: Harness,
    dir: tempfile::TempDir,
    users: [Uuid; 2],
}

impl Fixture {
    async fn new() -> Self {
        let h = Harness::database_only().await;
        pulseline_testkit::create_gateway_tables(&h.pool).await;
        Self {
            h,
            dir: tempfile::tempdir().expect("temporary directory"),
            users: [Uuid::now_v7(), Uuid::now_v7()],
        }
    }

    fn exporter(&self) -> Exporter {
        let config = ExportConfig::local(&self.h.db.url, &self.dir.path().to_string_lossy());
        Exporter::new(self.h.pool.clone(), &config).expect("exporter")
    }

    async fn sample(&self, user: Uuid, rec: &str, metric: &str, start: &str, value: f64) {
        let start: DateTime<Utc> = start.parse().expect("instant");
        sqlx::query(
            "INSERT INTO sample (user_id, source_id, source_record_id, start_at, metric, \
             device_type, end_at, tz_offset_minutes, value, unit, category, metadata, \
             content_hash, deleted, change_seq, change_index, accepted_at) \
             VALUES ($1, 'watch-of-alice', $2, $3, $4, 'WATCH', $3, 60, $5, 'count', NULL, \
             '{\"note\":\"free text\"}', '\\x00', false, 1, 0, now())",
        )
        .bind(user)
        .bind(rec)
        .bind(start)
        .bind(metric)
        .bind(value)
        .execute(&self.h.pool)
        .await
        .expect("insert sample");
    }

    async fn rollup(&self, user: Uuid, metric: &str, day: &str, value: f64, deleted: bool) {
        let day: NaiveDate = day.parse().expect("date");
        sqlx::query(
            "INSERT INTO rollup (user_id, metric, period, bucket_start, value, count, sources, \
             deleted, version) VALUES ($1, $2, 'DAY', $3, $4, 3, '{watch-of-alice}', $5, 1)",
        )
        .bind(user)
        .bind(metric)
        .bind(day.and_hms_opt(0, 0, 0).expect("midnight"))
        .bind(value)
        .bind(deleted)
        .execute(&self.h.pool)
        .await
        .expect("insert rollup");
    }

    async fn night(&self, user: Uuid, night: &str, asleep: f64) {
        let night: NaiveDate = night.parse().expect("date");
        sqlx::query(
            "INSERT INTO sleep_night (user_id, night, in_bed_minutes, asleep_minutes, \
             awake_minutes, awakenings, unspecified_minutes, nap_count, nap_minutes, version) \
             VALUES ($1, $2, 480, $3, 10, 1, 0, 0, 0, 1)",
        )
        .bind(user)
        .bind(night)
        .bind(asleep)
        .execute(&self.h.pool)
        .await
        .expect("insert night");
    }

    async fn block(&self, user: Uuid, metrics: &[&str]) {
        let metrics: Vec<String> = metrics.iter().map(|m| m.to_string()).collect();
        sqlx::query(
            "INSERT INTO user_privacy (user_id, blocked_metrics) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET blocked_metrics = EXCLUDED.blocked_metrics",
        )
        .bind(user)
        .bind(metrics)
        .execute(&self.h.pool)
        .await
        .expect("privacy");
    }

    /// Corrects sample `a-s1` to `value` and deletes `b-s2`, as the gateway would.
    async fn correct_and_delete(&self, value: f64) {
        sqlx::query("UPDATE sample SET value = $1, change_seq = change_seq + 1, accepted_at = now() WHERE source_record_id = 'a-s1'")
            .bind(value)
            .execute(&self.h.pool)
            .await
            .expect("correct");
        sqlx::query("UPDATE sample SET deleted = true, change_seq = change_seq + 1, accepted_at = now() WHERE source_record_id = 'b-s2'")
            .execute(&self.h.pool)
            .await
            .expect("delete");
    }

    /// Two users, two metrics, three days; one deleted sample, one tombstoned rollup, and
    /// the second user blocks HEART_RATE.
    async fn seed(&self) {
        let [a, b] = self.users;
        for (u, tag) in [(a, "a"), (b, "b")] {
            for (i, day) in ["2026-11-01", "2026-11-02", "2026-11-03"]
                .iter()
                .enumerate()
            {
                let at = format!("{day}T08:00:00Z");
                self.sample(u, &format!("{tag}-s{i}"), "STEPS", &at, 100.0 + i as f64)
                    .await;
                self.sample(
                    u,
                    &format!("{tag}-h{i}"),
                    "HEART_RATE",
                    &at,
                    60.5 + i as f64,
                )
                .await;
                self.rollup(u, "STEPS", day, 100.0 + i as f64, false).await;
                self.rollup(u, "HEART_RATE", day, 60.5, false).await;
                self.night(u, day, 400.0 + i as f64).await;
            }
        }
        // A sample at 23:30 UTC with +60 min belongs to the next local day.
        self.sample(a, "a-late", "STEPS", "2026-11-03T23:30:00Z", 7.0)
            .await;
        sqlx::query("UPDATE sample SET deleted = true WHERE source_record_id = 'a-s0'")
            .execute(&self.h.pool)
            .await
            .expect("delete");
        self.rollup(a, "STEPS", "2026-10-31", 0.0, true).await;
        self.block(b, &["HEART_RATE"]).await;
    }
}

/// A sample as Postgres holds it: user, metric, local date, start, value.
type StoredSample = (Uuid, String, NaiveDate, DateTime<Utc>, Option<f64>);
type SampleRow = (String, String, NaiveDate, i64, Option<u64>);
type RollupRow = (String, String, NaiveDate, i64, Option<u64>, i64);
type NightRow = (String, NaiveDate, i32, u64);

/// Every `part-*.parquet` under a dataset, with its partition directory, as the readers
/// of the export see them (temporary files are not `.parquet`).
fn parquet_files(root: &Path, dataset: &str) -> Vec<PathBuf> {
    files_under(&root.join(dataset))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// Every file under `dir` (none if it does not exist), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// `metric=...` and `date=...` of a file's path.
fn partition_of(root: &Path, file: &Path) -> (Option<String>, NaiveDate) {
    let rel = file
        .strip_prefix(root)
        .expect("under root")
        .to_string_lossy()
        .to_string();
    let mut metric = None;
    let mut date = None;
    for seg in rel.split('/') {
        if let Some(m) = seg.strip_prefix("metric=") {
            metric = Some(m.to_owned());
        }
        if let Some(d) = seg.strip_prefix("date=") {
            date = Some(d.parse().expect("date partition"));
        }
    }
    (metric, date.expect("date partition"))
}

fn batches(file: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(file).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet reader")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("type of {name}"))
}

/// Every row of a dataset's files, as `row` reads it (with the file's partition values),
/// sorted.
fn exported<T: Ord>(
    root: &Path,
    dataset: &str,
    row: impl Fn(&RecordBatch, usize, Option<&str>, NaiveDate) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    for f in parquet_files(root, dataset) {
        let (metric, date) = partition_of(root, &f);
        for b in batches(&f) {
            for name in [
                "user_id",
                "source_id",
                "source_record_id",
                "metadata",
                "sources",
            ] {
                assert!(b.column_by_name(name).is_none(), "{name} exported");
            }
            out.extend((0..b.num_rows()).map(|i| row(&b, i, metric.as_deref(), date)));
        }
    }
    out.sort();
    out
}

fn float(b: &RecordBatch, name: &str, i: usize) -> Option<u64> {
    let v = col::<Float64Array>(b, name);
    (!v.is_null(i)).then(|| v.value(i).to_bits())
}

fn exported_samples(root: &Path) -> Vec<SampleRow> {
    exported(root, "samples", |b, i, metric, date| {
        (
            col::<StringArray>(b, "subject_id").value(i).to_owned(),
            metric.expect("metric partition").to_owned(),
            date,
            col::<TimestampMicrosecondArray>(b, "start_at").value(i),
            float(b, "value", i),
        )
    })
}

fn exported_rollups(root: &Path) -> Vec<RollupRow> {
    exported(root, "rollups", |b, i, metric, date| {
        let start = b.column_by_name("bucket_start").expect("bucket_start");
        (
            col::<StringArray>(b, "subject_id").value(i).to_owned(),
            metric.expect("metric partition").to_owned(),
            date,
            start.as_primitive::<TimestampMicrosecondType>().value(i),
            float(b, "value", i),
            col::<Int64Array>(b, "count").value(i),
        )
    })
}

fn exported_nights(root: &Path) -> Vec<NightRow> {
    exported(root, "sleep_nights", |b, i, metric, date| {
        assert!(metric.is_none(), "sleep nights partition by date only");
        let night = b.column_by_name("night").expect("night");
        (
            col::<StringArray>(b, "subject_id").value(i).to_owned(),
            date,
            night.as_primitive::<Date32Type>().value(i),
            float(b, "asleep_minutes", i).expect("asleep minutes"),
        )
    })
}

const NOT_BLOCKED: &str =
    "NOT EXISTS (SELECT 1 FROM user_privacy p WHERE p.user_id = t.user_id AND";

/// What the export must hold, straight from Postgres, pseudonymised in the test.
async fn expected_samples(h: &Harness) -> Vec<SampleRow> {
    let rows: Vec<StoredSample> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, metric, ((start_at AT TIME ZONE 'UTC') + tz_offset_minutes * \
             interval '1 minute')::date, start_at, value FROM sample t WHERE NOT deleted AND \
             {NOT_BLOCKED} t.metric = ANY(p.blocked_metrics))"
    )))
    .fetch_all(&h.pool)
    .await
    .expect("expected samples");
    let mut names = Pseudonymizer::new(DEV_EXPORT_KEY).expect("key");
    let mut out: Vec<SampleRow> = rows
        .into_iter()
        .map(|(u, m, d, s, v)| {
            let subject = names.pseudonym(&u.to_string()).to_owned();
            (subject, m, d, s.timestamp_micros(), v.map(f64::to_bits))
        })
        .collect();
    out.sort();
    out
}

async fn expected_rollups(h: &Harness) -> Vec<RollupRow> {
    let rows: Vec<(Uuid, String, chrono::NaiveDateTime, Option<f64>, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT user_id, metric, bucket_start, value, count FROM rollup t WHERE NOT deleted \
             AND {NOT_BLOCKED} t.metric = ANY(p.blocked_metrics))"
        )))
        .fetch_all(&h.pool)
        .await
        .expect("expected rollups");
    let mut names = Pseudonymizer::new(DEV_EXPORT_KEY).expect("key");
    let mut out: Vec<RollupRow> = rows
        .into_iter()
        .map(|(u, m, b, v, c)| {
            let subject = names.pseudonym(&u.to_string()).to_owned();
            (
                subject,
                m,
                b.date(),
                b.and_utc().timestamp_micros(),
                v.map(f64::to_bits),
                c,
            )
        })
        .collect();
    out.sort();
    out
}

async fn expected_nights(h: &Harness) -> Vec<NightRow> {
    let rows: Vec<(Uuid, NaiveDate, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, night, asleep_minutes FROM sleep_night t WHERE NOT deleted AND \
         {NOT_BLOCKED} 'SLEEP_STAGE' = ANY(p.blocked_metrics))"
    )))
    .fetch_all(&h.pool)
    .await
    .expect("expected nights");
    let mut names = Pseudonymizer::new(DEV_EXPORT_KEY).expect("key");
    let epoch = NaiveDate::default();
    let mut out: Vec<NightRow> = rows
        .into_iter()
        .map(|(u, n, a)| {
            let subject = names.pseudonym(&u.to_string()).to_owned();
            let days = i32::try_from((n - epoch).num_days()).expect("days");
            (subject, n, days, a.to_bits())
        })
        .collect();
    out.sort();
    out
}

async fn assert_export_equals_postgres(f: &Fixture) {
    let root = f.dir.path();
    let samples = exported_samples(root);
    assert_eq!(samples, expected_samples(&f.h).await, "samples");
    assert_eq!(
        exported_rollups(root),
        expected_rollups(&f.h).await,
        "rollups"
    );
    assert_eq!(
        exported_nights(root),
        expected_nights(&f.h).await,
        "sleep nights"
    );
}

#[tokio::test]
async fn export_equals_postgres_and_follows_corrections_deletions_and_privacy() {
    let f = Fixture::new().await;
    f.seed().await;
    let mut exporter = f.exporter();
    exporter.export_once().await.expect("first export");
    assert_export_equals_postgres(&f).await;

    let root = f.dir.path();
    let samples = exported_samples(root);
    // 2 users x 3 days x 2 metrics + the late one, minus one deletion, minus user b's
    // three heart-rate samples.
    assert_eq!(samples.len(), 12 + 1 - 1 - 3);
    // The late sample is in the next local day's partition.
    assert!(samples.iter().any(|s| s.2.to_string() == "2026-11-04"));
    // No identifying text in any string column of any file (the files are compressed, so
    // the decoded values are checked, not the bytes).
    let secrets: Vec<String> = f
        .users
        .iter()
        .map(Uuid::to_string)
        .chain(["watch-of-alice", "free text", "a-s1"].map(String::from))
        .collect();
    for ds in ["samples", "rollups", "sleep_nights"] {
        for file in parquet_files(root, ds) {
            for b in batches(&file) {
                for c in b.columns() {
                    if let Some(strings) = c.as_any().downcast_ref::<StringArray>() {
                        for v in strings.iter().flatten() {
                            assert!(
                                !secrets.iter().any(|s| v.contains(s.as_str())),
                                "identifying text in {}",
                                file.display()
                            );
                        }
                    }
                }
            }
        }
    }

    // A correction, a deletion, a hard delete (retention) and a privacy change.
    let [a, b] = f.users;
    f.correct_and_delete(999.25).await;
    sqlx::query("UPDATE rollup SET deleted = true, value = NULL, version = version + 1, updated_at = now() WHERE user_id = $1 AND metric = 'STEPS' AND bucket_start = '2026-11-02'")
        .bind(a)
        .execute(&f.h.pool)
        .await
        .expect("tombstone");
    sqlx::query("DELETE FROM sleep_night WHERE user_id = $1 AND night = '2026-11-01'")
        .bind(b)
        .execute(&f.h.pool)
        .await
        .expect("retention");
    f.block(a, &["SLEEP_STAGE"]).await;

    // Before the next cycle the files are as they were; after it they equal Postgres.
    assert_eq!(exported_samples(root), samples);
    exporter.export_once().await.expect("second export");
    assert_export_equals_postgres(&f).await;
    let after = exported_samples(root);
    assert!(
        after.iter().any(|s| s.4 == Some(999.25f64.to_bits())),
        "correction exported"
    );
    assert_eq!(after.len(), samples.len() - 1, "deletion exported");
    assert!(
        exported_nights(root).len() < 3,
        "a's nights are blocked, b's first went"
    );
}

#[tokio::test]
async fn re_export_rewrites_nothing_and_never_duplicates() {
    let f = Fixture::new().await;
    f.seed().await;
    let root = f.dir.path();
    let mut exporter = f.exporter();
    let first = exporter.export_once().await.expect("first export");
    let files: Vec<(PathBuf, Vec<u8>)> = parquet_files(root, "samples")
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect();

    let second = exporter.export_once().await.expect("second export");
    for r in &second {
        assert_eq!(r.rewritten, 0, "{} rewritten without a change", r.dataset);
    }
    assert_eq!(
        first.iter().map(|r| r.rows_total).collect::<Vec<_>>(),
        second.iter().map(|r| r.rows_total).collect::<Vec<_>>()
    );

    // Forgetting the manifests forces a full rewrite: same files, byte for byte, no
    // second copy of any row.
    for ds in ["samples", "rollups", "sleep_nights"] {
        std::fs::remove_file(root.join(ds).join("_manifest.json")).expect("manifest");
    }
    let third = f.exporter().export_once().await.expect("third export");
    assert!(third.iter().all(|r| r.rewritten == r.partitions));
    for (p, bytes) in files {
        assert_eq!(std::fs::read(&p).expect("read"), bytes, "{}", p.display());
    }
    assert_export_equals_postgres(&f).await;
}

#[tokio::test]
async fn an_interrupted_export_leaves_the_old_or_the_new_partition() {
    let f = Fixture::new().await;
    f.seed().await;
    let root = f.dir.path();
    let mut exporter = f.exporter();
    exporter.export_once().await.expect("first export");
    let before = exported_samples(root);

    // A cycle killed between writing a partition's temporary file and renaming it: the
    // temporary file holds (part of) the new content, the old file is still in place.
    let part = parquet_files(root, "samples")
        .into_iter()
        .next()
        .expect("a samples partition");
    let tmp = part.with_file_name("part-0.parquet.tmp-0000");
    let new_bytes = std::fs::read(&part).expect("read");
    std::fs::write(&tmp, &new_bytes[..new_bytes.len() / 2]).expect("half-written temp file");
    // object_store's own staging file of that write (killed inside `put`): it lists no
    // file with `#` in its name, so only a look at the disk finds it.
    let staging = part.with_file_name("part-0.parquet.tmp-0000#1");
    std::fs::write(&staging, b"half").expect("staging file");
    // ... and a change that cycle was exporting.
    sqlx::query("UPDATE sample SET value = 1.5, change_seq = change_seq + 1, accepted_at = now() WHERE source_record_id = 'a-h2'")
        .execute(&f.h.pool)
        .await
        .expect("correct");

    // Readers see exactly the old partition (the temporary file is not a `.parquet`).
    assert_eq!(exported_samples(root), before);

    // The next cycle removes the leftover and exports the change once.
    exporter
        .export_once()
        .await
        .expect("export after the crash");
    assert!(!tmp.exists(), "leftover temporary file removed");
    assert!(!staging.exists(), "leftover staging file removed");
    assert_export_equals_postgres(&f).await;
    assert_eq!(exported_samples(root).len(), before.len());

    // A crash after the renames but before the manifest: the next cycle sees the same
    // partitions as changed and rewrites them, with no duplicate.
    // (Committed without moving the partition's latest change time, as a writer whose
    // transaction began before the last cycle would: the version sum still moves.)
    sqlx::query("UPDATE sample SET value = 2.5, change_seq = change_seq + 1, accepted_at = accepted_at WHERE source_record_id = 'a-h2'")
        .execute(&f.h.pool)
        .await
        .expect("correct again");
    let manifest = root.join("samples").join("_manifest.json");
    let old_manifest = std::fs::read(&manifest).expect("manifest");
    exporter.export_once().await.expect("export");
    assert!(
        exported_samples(root)
            .iter()
            .any(|s| s.4 == Some(2.5f64.to_bits())),
        "a change that did not move the change time is exported"
    );
    std::fs::write(&manifest, old_manifest).expect("restore the older manifest");
    let again = f
        .exporter()
        .export_once()
        .await
        .expect("export after the lost manifest");
    assert!(
        again
            .iter()
            .any(|r| r.dataset == "samples" && r.rewritten >= 1)
    );
    assert_export_equals_postgres(&f).await;
}

/// Copies every object of an S3 export root into `dir`, as an analyst's download would.
async fn download(root: &ExportRoot, dir: &Path) -> Vec<String> {
    let objects: Vec<StorePath> = root
        .store()
        .list(None)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .expect("list the bucket");
    let mut names = Vec::new();
    for location in objects {
        let bytes = root
            .store()
            .get(&location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let file = dir.join(location.as_ref());
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&file, &bytes).expect("write the copy");
        names.push(location.to_string());
    }
    names
}

/// moto's S3 emulator (started here; not AWS) and an export root in its bucket; the
/// emulator stops when the first value is dropped.
async fn s3_root() -> (MotoS3, ExportRoot) {
    let s3 = tokio::task::spawn_blocking(|| MotoS3::start("exports"))
        .await
        .expect("join")
        .expect("moto's S3 server");
    let root = ExportRoot::open_with("s3://exports/analytics", s3.options()).expect("S3 root");
    (s3, root)
}

/// The export root on S3 (moto's S3 emulator, started here; not AWS): the objects equal
/// Postgres after a first cycle and after corrections, no temporary object is left, and a
/// manifest another exporter wrote since a cycle read it is never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_root_holds_the_same_export_and_never_overwrites_a_newer_manifest() {
    let f = Fixture::new().await;
    f.seed().await;
    let (_s3, root) = s3_root().await;
    assert_eq!(root.location(), "s3://exports/analytics");
    let mut exporter = f.exporter().with_root(root.clone());
    exporter.export_once().await.expect("export to S3");
    let names = download(&root, f.dir.path()).await;
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    assert!(
        names.contains(&"samples/_manifest.json".to_owned()),
        "{names:?}"
    );
    assert_export_equals_postgres(&f).await;

    // A correction and a deletion reach the bucket at the next cycle.
    f.correct_and_delete(3.75).await;
    let seen = root
        .get(&StorePath::from("samples/_manifest.json"))
        .await
        .expect("read the manifest")
        .expect("a manifest")
        .1;
    exporter.export_once().await.expect("second export to S3");
    std::fs::remove_dir_all(f.dir.path().join("samples")).expect("clear the first copy");
    download(&root, f.dir.path()).await;
    assert_export_equals_postgres(&f).await;

    // The version read before that cycle is stale now: writing over it is refused, as a
    // second exporter that read the manifest before the first one wrote would be.
    let manifest = StorePath::from("samples/_manifest.json");
    let stale = root
        .replace_if_unchanged(&manifest, b"{}".to_vec(), seen)
        .await;
    assert!(
        matches!(stale, Err(ExportError::Concurrent { .. })),
        "{stale:?}"
    );
    let refused_create = root
        .replace_if_unchanged(&manifest, b"{}".to_vec(), None)
        .await;
    assert!(
        matches!(refused_create, Err(ExportError::Concurrent { .. })),
        "{refused_create:?}"
    );
    // Nothing was overwritten: the export still equals Postgres.
    std::fs::remove_dir_all(f.dir.path().join("samples")).expect("clear");
    download(&root, f.dir.path()).await;
    assert_export_equals_postgres(&f).await;
}

/// Two exporters on one S3 root: a slow one reads the root, the other exports a correction
/// and a deletion meanwhile; the slow one's first partition write is then refused
/// (`Concurrent`, conditional on the version it read), so it never writes a partition it
/// read before the other wrote it, and the bucket keeps the other's export, equal to
/// Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_slow_exporter_never_writes_over_a_partition_written_since_it_read() {
    let f = Fixture::new().await;
    f.seed().await;
    let (_s3, root) = s3_root().await;
    // Samples are the first dataset: the correction below changes two of its partitions.
    let mut slow = f.exporter().with_root(root.clone());
    let mut other = f.exporter().with_root(root.clone());
    slow.export_once().await.expect("a first cycle");

    let stale = slow
        .snapshot()
        .await
        .expect("the slow cycle reads the root");
    f.correct_and_delete(3.75).await;
    other
        .export_once()
        .await
        .expect("the other exporter's cycle");
    let late = slow.export_from(stale).await;
    match &late {
        Err(ExportError::Concurrent { path }) => assert!(
            path.ends_with(pulseline_sinks::export::PART_FILE),
            "refused at {path}, not at its first partition file"
        ),
        other => panic!("the slow cycle was not refused: {other:?}"),
    }
    download(&root, f.dir.path()).await;
    assert_export_equals_postgres(&f).await;
    // Its next cycle starts from what is there and succeeds.
    slow.export_once()
        .await
        .expect("the slow exporter's next cycle");
}

/// The exporter binary SIGKILLed at seeded moments of its cycles, with corrections,
/// deletions and privacy changes (each making the next cycle rewrite every partition)
/// between the kills: the export ends equal to Postgres, with no leftover file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_exporter_process_ends_equal_to_postgres() {
    let mut rng =
        StdRng::seed_from_u64(pulseline_testkit::test_seed("killed exporter", 20_261_202));
    let f = Fixture::new().await;
    f.seed().await;
    let [a, b] = f.users;
    // Many partitions (about 250 days x 2 metrics per user), so a cycle takes long enough
    // to be killed in its middle.
    for user in [a, b] {
        sqlx::query(
            "INSERT INTO sample (user_id, source_id, source_record_id, start_at, metric, \
             device_type, end_at, tz_offset_minutes, value, unit, category, metadata, \
             content_hash, deleted, change_seq, change_index, accepted_at) \
             SELECT $1, 'watch-of-alice', 'bulk-' || m || '-' || g, \
             timestamptz '2026-03-01 00:00Z' + g * interval '37 minutes', m, 'WATCH', \
             timestamptz '2026-03-01 00:00Z' + g * interval '37 minutes', 60, g % 200, \
             'count', NULL, '{}', '\\x00', false, 1, 0, now() \
             FROM generate_series(0, 9999) g, unnest(ARRAY['STEPS', 'HEART_RATE']) m",
        )
        .bind(user)
        .execute(&f.h.pool)
        .await
        .expect("bulk samples");
    }
    let export = |f: &Fixture| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pulseline-export"))
            .args(["--once", "--database-url", &f.h.db.url, "--export-dir"])
            .arg(f.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pulseline-export")
    };
    // An uninterrupted first cycle: how long a whole cycle takes.
    let started = std::time::Instant::now();
    let status = export(&f).wait().expect("wait");
    assert!(status.success());
    let whole = started.elapsed();
    let mut killed_running = 0;
    for round in 0..5_u32 {
        sqlx::query("UPDATE sample SET value = value + 1, change_seq = change_seq + 1, accepted_at = now() WHERE source_record_id = $1")
            .bind(format!("bulk-STEPS-{}", rng.random_range(0..10_000)))
            .execute(&f.h.pool)
            .await
            .expect("correct");
        sqlx::query("UPDATE sample SET deleted = true, change_seq = change_seq + 1, accepted_at = now() WHERE source_record_id = $1")
            .bind(format!("bulk-HEART_RATE-{}", rng.random_range(0..10_000)))
            .execute(&f.h.pool)
            .await
            .expect("delete");
        f.block(b, if round % 2 == 0 { &[] } else { &["HEART_RATE"] })
            .await;
        let at = whole.mul_f64(rng.random_range(0.1..0.9));
        let mut child = export(&f);
        tokio::time::sleep(at).await;
        let running = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "round {round}: SIGKILL after {at:?} (a whole cycle took {whole:?}); running: {running}"
        );
        killed_running += usize::from(running);
    }
    assert!(
        killed_running >= 1,
        "no kill landed inside a cycle: the test proved nothing"
    );
    let status = export(&f).wait().expect("wait");
    assert!(status.success());
    assert_export_equals_postgres(&f).await;
    let leftovers: Vec<PathBuf> = files_under(f.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn production_refuses_the_development_key() {
    let mut c = ExportConfig::local("postgres://x/y", "./export");
    assert!(c.validate().is_ok());
    c.environment = pulseline_service::config::Environment::Production;
    let err = c.validate().expect_err("dev key in production");
    assert!(err.to_string().contains("PULSELINE_EXPORT_KEY"), "{err}");
    c.export_key = "a-real-export-key-that-is-long-enough-0123".into();
    assert!(c.validate().is_ok());
    c.export_key = "short".into();
    assert!(c.validate().is_err());
}
