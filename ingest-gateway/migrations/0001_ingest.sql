-- The write path's tables. Postgres is the system of record for accepted samples and
-- events: Kafka topics can be rebuilt from `sample` and `user_event` (republish).

-- Per-user ingest sequence, one per stream (1 = samples, 2 = events). A request that
-- changes something takes the next number; the row lock also serialises one user's
-- requests, so a user's outbox ids grow with the sequence.
CREATE TABLE user_stream (
    user_id  uuid     NOT NULL,
    stream   smallint NOT NULL CHECK (stream IN (1, 2)),
    last_seq bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, stream)
);

-- When each sequence number was accepted: the basis of freshness lag downstream.
CREATE TABLE accepted_change (
    user_id     uuid        NOT NULL,
    stream      smallint    NOT NULL,
    seq         bigint      NOT NULL,
    accepted_at timestamptz NOT NULL,
    items       integer     NOT NULL,
    PRIMARY KEY (user_id, stream, seq)
);

-- Request idempotency: (user, requestId) -> payload hash and the answer it produced.
-- The row is inserted first in the request's transaction, so a concurrent duplicate
-- blocks on it and then reads the committed answer.
CREATE TABLE idempotency_key (
    user_id         uuid        NOT NULL,
    request_id      uuid        NOT NULL,
    endpoint        smallint    NOT NULL,
    payload_hash    bytea       NOT NULL,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, request_id)
);
CREATE INDEX idempotency_key_created_at ON idempotency_key (created_at);

-- Current content of every accepted sample, by natural key; deletions are soft
-- (deleted = true) so republish can rebuild DELETE records too.
CREATE TABLE sample (
    user_id           uuid             NOT NULL,
    source_id         text             NOT NULL,
    source_record_id  text             NOT NULL,
    start_at          timestamptz      NOT NULL,
    metric            text             NOT NULL,
    device_type       text             NOT NULL,
    end_at            timestamptz      NOT NULL,
    tz_offset_minutes integer          NOT NULL,
    value             double precision,
    unit              text,
    category          text,
    metadata          jsonb,
    content_hash      bytea            NOT NULL,
    deleted           boolean          NOT NULL DEFAULT false,
    change_seq        bigint           NOT NULL,
    change_index      integer          NOT NULL,
    accepted_at       timestamptz      NOT NULL,
    PRIMARY KEY (user_id, source_id, source_record_id, start_at)
);
CREATE INDEX sample_start_at ON sample (start_at);

-- Current content of every accepted user event, by natural key (user, eventId).
CREATE TABLE user_event (
    user_id           uuid        NOT NULL,
    event_id          text        NOT NULL,
    event_type        text        NOT NULL,
    product_id        text,
    start_at          timestamptz NOT NULL,
    end_at            timestamptz,
    tz_offset_minutes integer     NOT NULL,
    attributes        jsonb,
    content_hash      bytea       NOT NULL,
    deleted           boolean     NOT NULL DEFAULT false,
    change_seq        bigint      NOT NULL,
    change_index      integer     NOT NULL,
    accepted_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, event_id)
);

-- Records waiting to be published. `payload` is the record (SampleChange or
-- UserEventChange) as JSON; the relay encodes it as Avro. `shard` is derived from the
-- user id: one relay at a time owns a shard (advisory lock), so per-user order holds with
-- several relays. Published rows are deleted in the transaction that claimed them, so no
-- "highest id published" watermark exists to skip a late-committing lower id.
CREATE TABLE outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard        smallint    NOT NULL,
    stream       smallint    NOT NULL,
    user_id      uuid        NOT NULL,
    change_seq   bigint      NOT NULL,
    change_index integer     NOT NULL,
    payload      json        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_shard_id ON outbox (shard, id);

-- Per-user privacy settings: metrics the user does not want stored.
CREATE TABLE user_privacy (
    user_id         uuid   PRIMARY KEY,
    blocked_metrics text[] NOT NULL DEFAULT '{}'
);
