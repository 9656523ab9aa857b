-- Fails until a row exists in gate.open (readable by PUBLIC, set up by the test): a
-- provisioning failure the test can fix without changing the migration.
CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, amount int NOT NULL DEFAULT 0);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gate.open) THEN
        RAISE EXCEPTION 'gate closed';
    END IF;
END
$$;
