CREATE TABLE signups (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL
);

-- One welcome email per signup: what the consumer sends.
CREATE TABLE welcome_emails (
    signup_id BIGINT PRIMARY KEY,
    email TEXT NOT NULL
);
