-- The Postgres sink's tables (versions 1001+; the gateway owns 0001-0999 in the same
-- database and `_sqlx_migrations` table, so every crate's migrator ignores the others').

-- Daily and hourly rollups, one row per (user, metric, period, local bucket start), as the
-- rollups processor last emitted them. `version` derives from change ids; the sink writes a
-- row only when the incoming version is newer, so replays, duplicates and late lower
-- versions change nothing. Buckets whose samples were all deleted stay as `deleted = true`
-- tombstones that keep their version, so a late lower version can never resurrect them.
CREATE TABLE rollup (
    user_id      uuid             NOT NULL,
    metric       text             NOT NULL,
    period       text             NOT NULL CHECK (period IN ('DAY', 'HOUR')),
    -- Local wall-clock start of the bucket (the samples' own offsets), hence no time zone.
    bucket_start timestamp        NOT NULL,
    value        double precision,
    min          double precision,
    max          double precision,
    count        bigint           NOT NULL,
    sources      text[]           NOT NULL DEFAULT '{}',
    deleted      boolean          NOT NULL DEFAULT false,
    version      bigint           NOT NULL,
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, metric, period, bucket_start)
);

-- Per read model and user: the user's ingest sequence (per stream, 1 = samples,
-- 2 = events) that the read model reflects. Written in the transaction that writes the
-- read-model rows, and only ever raised, so the query API's freshness never overstates.
CREATE TABLE sink_progress (
    read_model  text        NOT NULL,
    user_id     uuid        NOT NULL,
    stream      smallint    NOT NULL CHECK (stream IN (1, 2)),
    applied_seq bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (read_model, user_id, stream)
);

-- Where each sink consumer resumes, per topic partition: the offset after the last record
-- it applied. Written in the same transaction as the rows (compare-and-set on the value
-- the batch was read from), so a crash never applies a batch twice or skips one, and a
-- fenced-off instance cannot write at all. Kafka's committed offsets are never used.
CREATE TABLE sink_offset (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
