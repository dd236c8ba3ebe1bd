-- Calls going on, so that a crash does not lose them from the history: for
-- each, the entries its members would get if it ended now (a JSON list of
-- records). A call's row goes when it ends; rows left at start are calls a
-- crash interrupted, and become history entries then.
CREATE TABLE open_calls (
    call_id    INTEGER PRIMARY KEY,
    records    TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- When the calls service last said it was running (one row): an
-- interrupted call ended no later than this.
CREATE TABLE calls_alive (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at INTEGER NOT NULL
);
