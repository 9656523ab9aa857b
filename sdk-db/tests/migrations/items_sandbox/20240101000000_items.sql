-- The sandbox's `items` has one column more than production's `items (id int, name text)`.
CREATE TABLE items (id int, name text, extra text);
INSERT INTO items VALUES (1, 'sandbox-one', 'x'), (2, 'sandbox-two', 'y');
