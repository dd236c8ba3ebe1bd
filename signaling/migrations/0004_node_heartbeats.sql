-- Several nodes may share one database (PostgreSQL, issue 18): each keeps
-- its own heartbeat and marks the calls it keeps open and the accounts
-- present on it, so that a node starting after a crash recovers its own
-- rows only, never another live node's. A server without a cluster is node
-- 'local', as is everything written before this migration.

CREATE TABLE node_heartbeats (
    node_id  TEXT    PRIMARY KEY,
    alive_at INTEGER NOT NULL
);
INSERT INTO node_heartbeats (node_id, alive_at) SELECT 'local', alive_at FROM node_alive;
DROP TABLE node_alive;

ALTER TABLE open_calls ADD COLUMN node_id TEXT NOT NULL DEFAULT 'local';

-- The node the account was last marked present on (with present_since).
ALTER TABLE accounts ADD COLUMN present_node TEXT;
UPDATE accounts SET present_node = 'local' WHERE present_since IS NOT NULL;
