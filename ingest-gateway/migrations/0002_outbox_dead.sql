-- Poison outbox rows: rows whose payload the relay cannot decode or Avro-encode (a bug or
-- a manual insert, never an outage). The relay moves such a row here, with the reason, in
-- the same transaction that publishes the rest of its batch, so one bad row never blocks
-- its shard. Once the cause is fixed, put rows back with
--   INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload, created_at)
--   SELECT shard, stream, user_id, change_seq, change_index, payload, created_at FROM outbox_dead WHERE ...;
-- (their change ids are unchanged, so downstream stays idempotent).
CREATE TABLE outbox_dead (
    id           bigint      PRIMARY KEY, -- the row's id in `outbox`
    shard        smallint    NOT NULL,
    stream       smallint    NOT NULL,
    user_id      uuid        NOT NULL,
    change_seq   bigint      NOT NULL,
    change_index integer     NOT NULL,
    payload      json        NOT NULL,
    created_at   timestamptz NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL
);
CREATE INDEX outbox_dead_user ON outbox_dead (user_id);
