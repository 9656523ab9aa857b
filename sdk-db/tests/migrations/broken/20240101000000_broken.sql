-- Valid statements followed by a syntax error: provisioning must fail and leave nothing behind.
CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
INSERT INTO orders (item) VALUES ('from-broken-migration');
SELEC 1;
