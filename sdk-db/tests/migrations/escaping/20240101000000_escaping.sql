-- A migration that tries to leave the sandbox: under `SET ROLE` on the production login's
-- connection, `RESET ROLE` would make the rest run as production.
CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, amount int NOT NULL DEFAULT 0);
RESET ROLE;
INSERT INTO public.orders (item) VALUES ('escaped by a migration');
