-- What a crash must not lose: the calls going on, and who was present.

-- Each call going on (JSON: the call as its members see it, and the
-- entries they would get in their history if it ended now). A call's row
-- goes when it ends; rows left at start are calls a crash interrupted, and
-- become history entries (and `call_ended` webhooks) then.
CREATE TABLE open_calls (
    call_id    INTEGER PRIMARY KEY,
    body       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- When the server last said it was running (one row, a heartbeat): what a
-- crash interrupted ended no later than this.
CREATE TABLE node_alive (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at INTEGER NOT NULL
);

-- When the account came online, while it is present (cleared with its
-- last-seen time when it goes offline): accounts still marked at start were
-- present at a crash and were last seen at the last heartbeat.
ALTER TABLE accounts ADD COLUMN present_since INTEGER;
