-- Impact windows: the session and product impacts of the impact processors.
-- Both read the samples and the events stream, so a row's version is a pair compared
-- lexicographically: (version, events_version) = the last change id of each stream applied
-- when the row last changed. Same tombstones as the other read models: a row that went is
-- kept as `deleted = true` with its version, so a late lower version can never resurrect it.

-- One row per (user, event, metric): the metric's mean in the baseline window before the
-- event and in the window after it. `local_date` is the event's local start date (the
-- date the API filters on); `start_at`/`end_at` are UTC instants.
CREATE TABLE session_impact (
    user_id         uuid             NOT NULL,
    event_id        text             NOT NULL,
    metric          text             NOT NULL,
    event_type      text             NOT NULL,
    product_id      text,
    start_at        timestamptz,
    end_at          timestamptz,
    local_date      date,
    baseline_avg    double precision,
    after_avg       double precision,
    delta_percent   double precision,
    baseline_count  bigint           NOT NULL,
    after_count     bigint           NOT NULL,
    reliable        boolean          NOT NULL,
    deleted         boolean          NOT NULL DEFAULT false,
    version         bigint           NOT NULL,
    events_version  bigint           NOT NULL,
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_id, metric)
);
CREATE INDEX session_impact_by_date ON session_impact (user_id, local_date) WHERE NOT deleted;

-- One row per (user, event type, product, metric, period of 30 or 90 days ending at
-- `as_of`). `product_key` is the product id, or '' for events without a product (a
-- primary key column cannot be NULL); `product_id` keeps the NULL.
CREATE TABLE product_impact (
    user_id            uuid             NOT NULL,
    event_type         text             NOT NULL,
    product_key        text             NOT NULL,
    metric             text             NOT NULL,
    period_days        integer          NOT NULL CHECK (period_days > 0),
    product_id         text,
    n                  bigint           NOT NULL,
    avg_delta_percent  double precision,
    std_dev            double precision,
    tier               text             NOT NULL
        CHECK (tier IN ('INSUFFICIENT', 'LOW', 'MEDIUM', 'HIGH')),
    as_of              timestamptz,
    deleted            boolean          NOT NULL DEFAULT false,
    version            bigint           NOT NULL,
    events_version     bigint           NOT NULL,
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_type, product_key, metric, period_days)
);
