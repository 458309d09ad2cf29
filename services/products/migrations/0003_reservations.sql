-- Stock held for orders: reserved when an order is placed, committed (taken
-- out of stock) when its OrderCreated event arrives, released or returned
-- when it is cancelled. Available = stock - reserved.
ALTER TABLE products ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0);

CREATE TABLE reservations (
    order_id    TEXT NOT NULL,
    product_id  TEXT NOT NULL REFERENCES products (id),
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    price_cents BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    -- RESERVED, COMMITTED, RELEASED (never committed) or RETURNED (after commit)
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
