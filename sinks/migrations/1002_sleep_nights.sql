-- Sleep nights, one row per (user, night) as the sleep processor last emitted it (issue 9).
-- `night` is the local date of waking (the offset of the sample that ends the main
-- sleep), hence a plain date; `bed_at` and `wake_at` are UTC instants. Minutes are
-- rounded to 0.1. The stage minutes are NULL, not 0, when no slice of the night resolved
-- to a stage (a phone-only night). Same version guard and tombstones as `rollup`: a
-- night whose sessions all went is kept as `deleted = true` with its version, so a late
-- lower version can never resurrect it.
CREATE TABLE sleep_night (
    user_id             uuid             NOT NULL,
    night               date             NOT NULL,
    bed_at              timestamptz,
    wake_at             timestamptz,
    in_bed_minutes      double precision NOT NULL,
    asleep_minutes      double precision NOT NULL,
    awake_minutes       double precision NOT NULL,
    latency_minutes     double precision,
    efficiency          double precision CHECK (efficiency BETWEEN 0 AND 1),
    awakenings          integer          NOT NULL,
    rem_minutes         double precision,
    deep_minutes        double precision,
    core_minutes        double precision,
    unspecified_minutes double precision NOT NULL,
    nap_count           integer          NOT NULL,
    nap_minutes         double precision NOT NULL,
    sources             text[]           NOT NULL DEFAULT '{}',
    deleted             boolean          NOT NULL DEFAULT false,
    version             bigint           NOT NULL,
    updated_at          timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, night)
);
