-- The event store: one append-only stream per order. (stream_id, version)
-- is the optimistic-concurrency check: two writers that read the same
-- version cannot both append the next one.
CREATE TABLE order_events (
    stream_id      TEXT NOT NULL,
    version        BIGINT NOT NULL,
    event_id       TEXT NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    schema_version TEXT NOT NULL,
    data           TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    PRIMARY KEY (stream_id, version)
);

-- The read model (CQRS): one row per order, kept by the projector in the
-- transaction that appends, and rebuilt from order_events on demand.
CREATE TABLE order_view (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    items       TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    payment_id  TEXT,
    packed_at   BIGINT,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX order_view_user ON order_view (user_id, created_at);

-- Idempotency-Key of POST /orders: the order a key stands for, and a hash
-- of the request it came with.
CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);
