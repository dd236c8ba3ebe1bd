-- PostgreSQL's version of ../0004_node_heartbeats.sql.

CREATE TABLE node_heartbeats (
    node_id  TEXT   PRIMARY KEY,
    alive_at BIGINT NOT NULL
);
INSERT INTO node_heartbeats (node_id, alive_at) SELECT 'local', alive_at FROM node_alive;
DROP TABLE node_alive;

ALTER TABLE open_calls ADD COLUMN node_id TEXT NOT NULL DEFAULT 'local';

ALTER TABLE accounts ADD COLUMN present_node TEXT;
UPDATE accounts SET present_node = 'local' WHERE present_since IS NOT NULL;
