-- Fails until the database setting prodbox.gate is 'open' (set by the test with ALTER
-- DATABASE): a provisioning failure the test can fix without changing the migration.
CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, amount int NOT NULL DEFAULT 0);
DO $$
BEGIN
    IF current_setting('prodbox.gate', true) IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION 'gate closed';
    END IF;
END
$$;
