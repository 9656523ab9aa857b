-- The shop's tables. Production has them in `public`; every sandbox gets its own copy in its
-- schema (prodbox-db runs these migrations there).
CREATE TABLE orders (
    id text PRIMARY KEY,
    item text NOT NULL,
    amount_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE invoices (
    order_id text PRIMARY KEY,
    amount_cents bigint NOT NULL,
    tax_cents bigint NOT NULL,
    billed_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
