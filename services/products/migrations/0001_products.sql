-- The catalogue. Portable between SQLite and Postgres: amounts in cents,
-- times in Unix milliseconds. `version` grows by one on every change and is
-- what optimistic concurrency compares.
CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    category    TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL,
    stock       BIGINT NOT NULL CHECK (stock >= 0),
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE INDEX products_category ON products (category);
CREATE INDEX products_price ON products (price_cents);
