-- PostgreSQL's version of ../0003_open_calls.sql.

CREATE TABLE open_calls (
    call_id    BIGINT PRIMARY KEY,
    body       TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE node_alive (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    alive_at BIGINT NOT NULL
);

ALTER TABLE accounts ADD COLUMN present_since BIGINT;
