-- The service's schema: applied to production (public) and run into every sandbox schema.
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    item text NOT NULL,
    amount int NOT NULL DEFAULT 0
);
CREATE INDEX orders_item_idx ON orders (item);
