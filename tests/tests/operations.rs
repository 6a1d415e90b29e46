//! The operations commands (`pulseline dead-letters`, `outbox-dead`, `sink-offsets`,
//! `reconcile`) on the whole pipeline in this process, on the local stack: each one finds
//! what went wrong, and its repair leaves the read models equal to the oracle over what
//! Postgres accepted. Needs `scripts/stack up`.

mod support;

use std::time::{Duration, Instant};

use pulseline_cli::ops::{Deployment, dead_letters, outbox_dead, reconcile, sink_offsets};
use pulseline_ingest_gateway::outbox::{DEFAULT_SHARDS, shard_of};
use pulseline_stream_processors::processors::registered_names;
use serde_json::Value;
use sqlx::PgPool;
use support::{Env, heart_rate};
use uuid::Uuid;

/// The deployment the commands act on: the test's database, broker, registry and prefix.
fn deployment(env: &Env) -> Deployment {
    let c = env.p.config();
    Deployment::new(
        &c.database_url,
        &c.kafka_bootstrap,
        &c.schema_registry_url,
        &c.topic_prefix,
    )
}

async fn pool(env: &Env) -> PgPool {
    PgPool::connect(&env.db.url).await.expect("test database")
}

/// The local days of the user's daily heart-rate rollups and their sample count.
async fn heart_rate_days(env: &Env, user: Uuid) -> (Vec<String>, i64) {
    let answer = env.rollups(user, "HEART_RATE").await;
    let data = answer["data"].as_array().expect("data");
    let mut days: Vec<String> = data
        .iter()
        .filter_map(|d| d["localStart"].as_str().map(str::to_owned))
        .collect();
    days.sort();
    let count = data.iter().filter_map(|d| d["count"].as_i64()).sum();
    (days, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_listed_and_replayed_once_its_cause_is_fixed() {
    let env = Env::start("ops-dlq").await;
    let user = Uuid::new_v4();
    env.upload(user, vec![heart_rate("hr-now", 5)]).await;
    // Accepted, then refused by every processor as older than their allowed lateness (a day).
    let seq = env
        .upload(user, vec![heart_rate("hr-old", 3 * 24 * 60)])
        .await;
    env.fresh_at(user, "HEART_RATE", seq).await;
    assert_eq!(heart_rate_days(&env, user).await.0.len(), 1);

    let d = deployment(&env);
    let too_late = dead_letters::Selection {
        reason: Some("TOO_LATE".into()),
        ..Default::default()
    };
    let letters = dead_letters::list(&d, &too_late).await.expect("list");
    assert_eq!(letters.len(), registered_names().len(), "{letters:?}");
    let user_key = user.to_string();
    for l in &letters {
        assert_eq!(l.stage, "processor");
        assert_eq!(l.key.as_deref(), Some(user_key.as_str()));
        assert!(l.source_topic.ends_with("health.samples.v1"), "{l:?}");
    }
    let by_id = dead_letters::Selection {
        ids: vec![(letters[0].partition, letters[0].offset)],
        ..Default::default()
    };
    let one = dead_letters::list(&d, &by_id).await.expect("list one");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id(), letters[0].id());
    let sinks = dead_letters::Selection {
        stage: Some("sink".into()),
        ..Default::default()
    };
    assert!(
        dead_letters::list(&d, &sinks)
            .await
            .expect("list")
            .is_empty()
    );

    let pool = pool(&env).await;
    let before = reconcile::compare(&pool, Some(user))
        .await
        .expect("compare");
    assert!(
        before.differing.len() == 1
            && before.differing[0]
                .problems
                .iter()
                .any(|(m, _)| *m == "rollups"),
        "reconcile sees the day the dead letter left out: {before:?}"
    );

    // The cause fixed (a larger allowed lateness), the dead letters go back.
    let mut runtime = env.p.config().runtime.clone();
    runtime.allowed_lateness_days = 400;
    let env = env.restart_processors(runtime).await;
    let report = dead_letters::replay(&d, &letters).await.expect("replay");
    assert_eq!(
        (
            report.reaccepted_letters,
            report.reaccepted_records,
            report.whole_streams,
            report.republished_to_topic,
            report.skipped.len()
        ),
        (letters.len(), 1, 0, 0, 0),
        "one item, accepted again under a new change id: {report:?}"
    );
    env.fresh_at(user, "HEART_RATE", seq + 1).await;
    let (days, count) = heart_rate_days(&env, user).await;
    assert_eq!((days.len(), count), (2, 2), "{days:?}");
    let after = reconcile::compare(&pool, Some(user))
        .await
        .expect("compare");
    assert!(after.compared > 0);
    assert_eq!(after.differences(), 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_outbox_row_is_replayed_under_a_new_change_id() {
    let env = Env::start("ops-outbox").await;
    let user = Uuid::new_v4();
    let seq = env.upload(user, vec![heart_rate("hr-1", 30)]).await;
    env.fresh_at(user, "HEART_RATE", seq).await;

    // A change accepted with an outbox payload the relay cannot read (as a bug would
    // write it): the sample row is right, its outbox row is not.
    let pool = pool(&env).await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("UPDATE user_stream SET last_seq = $2 WHERE user_id = $1 AND stream = 1")
        .bind(user)
        .bind(seq + 1)
        .execute(&mut *tx)
        .await
        .expect("sequence");
    sqlx::query(
        "INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items)
         VALUES ($1, 1, $2, now(), 1)",
    )
    .bind(user)
    .bind(seq + 1)
    .execute(&mut *tx)
    .await
    .expect("accepted change");
    sqlx::query(
        "INSERT INTO sample (user_id, source_id, source_record_id, start_at, metric,
                             device_type, end_at, tz_offset_minutes, value, unit,
                             content_hash, change_seq, change_index, accepted_at)
         VALUES ($1, 'watch-1', 'hr-2', date_trunc('second', now() - interval '20 minutes'),
                 'HEART_RATE', 'apple_watch', date_trunc('second', now() - interval '20 minutes'),
                 0, 80.0, 'count/min', '\\x00', $2, 0, now())",
    )
    .bind(user)
    .bind(seq + 1)
    .execute(&mut *tx)
    .await
    .expect("sample");
    sqlx::query(
        "INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload)
         VALUES ($1, 1, $2, $3, 0, '{\"not\": \"a sample\"}')",
    )
    .bind(shard_of(user, DEFAULT_SHARDS))
    .bind(user)
    .bind(seq + 1)
    .execute(&mut *tx)
    .await
    .expect("outbox row");
    tx.commit().await.expect("commit");

    let began = Instant::now();
    let dead = loop {
        let dead = outbox_dead::list(&pool, &[]).await.expect("list");
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the relay did not set the poison row aside"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].user_id, dead[0].change_seq), (user, seq + 1));
    let stale: Value = env.rollups(user, "HEART_RATE").await;
    assert_eq!(stale["freshness"]["status"], "stale", "{stale}");

    let report = outbox_dead::replay(&pool, DEFAULT_SHARDS, &[])
        .await
        .expect("replay");
    assert_eq!(
        (report.rows, report.whole_streams, report.records),
        (1, 1, 2),
        "an unreadable payload names only its user: both samples accepted again"
    );
    assert!(
        outbox_dead::list(&pool, &[])
            .await
            .expect("list")
            .is_empty()
    );
    env.fresh_at(user, "HEART_RATE", seq + 2).await;
    assert_eq!(heart_rate_days(&env, user).await.1, 2);
    let after = reconcile::compare(&pool, Some(user))
        .await
        .expect("compare");
    assert_eq!(after.differences(), 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_reports_lost_read_model_rows_and_repairs_them() {
    let env = Env::start("ops-reconcile").await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    env.upload(user, vec![heart_rate("hr-1", 90), heart_rate("hr-2", 30)])
        .await;
    let seq = env.upload(other, vec![heart_rate("hr-1", 45)]).await;
    env.fresh_at(other, "HEART_RATE", seq).await;
    env.fresh_at(user, "HEART_RATE", 1).await;
    let pool = pool(&env).await;

    let clean = reconcile::compare(&pool, None).await.expect("compare");
    assert_eq!((clean.users, clean.differences()), (2, 0), "{clean:?}");
    assert!(clean.compared >= 4, "{clean:?}");

    // A botched restore loses the user's hourly rows.
    let lost = sqlx::query("DELETE FROM rollup WHERE user_id = $1 AND period = 'HOUR'")
        .bind(user)
        .execute(&pool)
        .await
        .expect("delete")
        .rows_affected();
    assert!(lost > 0);
    let found = reconcile::compare(&pool, None).await.expect("compare");
    assert_eq!(found.differing.len(), 1, "{found:?}");
    assert_eq!(found.differing[0].user, user);
    assert_eq!(found.differences(), lost as usize, "{found:?}");

    let records = reconcile::repair(&pool, DEFAULT_SHARDS, &[user])
        .await
        .expect("repair");
    assert_eq!(records, 2);
    reconcile::wait_until_fresh(&pool, &[user], Duration::from_secs(120))
        .await
        .expect("fresh after the repair");
    let repaired = reconcile::compare(&pool, None).await.expect("compare");
    assert_eq!(repaired.differences(), 0, "{repaired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_offsets_are_listed_and_reset_per_consumer() {
    let env = Env::start("ops-offsets").await;
    let user = Uuid::new_v4();
    let seq = env.upload(user, vec![heart_rate("hr-1", 30)]).await;
    env.fresh_at(user, "HEART_RATE", seq).await;
    let pool = pool(&env).await;
    // Every read model's sink has written (progress at least), so each stored its offsets.
    reconcile::wait_until_fresh(&pool, &[user], Duration::from_secs(60))
        .await
        .expect("every read model fresh");

    let all = sink_offsets::list(&pool, &Default::default())
        .await
        .expect("list");
    let rollups = all
        .iter()
        .find(|o| o.topic.ends_with("readmodel.rollups.v1"))
        .unwrap_or_else(|| panic!("the rollups sink stored its offsets: {all:?}"))
        .consumer
        .clone();
    let selection = sink_offsets::OffsetSelection {
        consumer: Some(rollups.clone()),
        topic: None,
    };
    let mine = sink_offsets::list(&pool, &selection).await.expect("list");
    assert!(!mine.is_empty() && mine.len() < all.len(), "{all:?}");
    assert!(mine.iter().all(|o| o.consumer == rollups));
    assert_eq!(
        sink_offsets::reset(&pool, &selection).await.expect("reset"),
        mine.len() as u64
    );
    assert!(
        sink_offsets::list(&pool, &selection)
            .await
            .expect("list")
            .is_empty()
    );
    let rest = sink_offsets::list(&pool, &Default::default())
        .await
        .expect("list");
    assert_eq!(rest.len(), all.len() - mine.len());
}
