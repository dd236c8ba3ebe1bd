//! What is about the SQLite file itself, and so runs in the SQLite binary
//! only (`api_postgres` includes every other module): the store file is
//! readable by its owner only.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{StoreFile, with_config};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let file = StoreFile::new("private");
    with_config(LIMIT, file.config(), async |s, _| {
        // Something written, so the WAL exists too.
        common::Api::new(s).user("pat", "web").await;
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", file.path);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{path}: {mode:o}");
        }
    })
    .await;
}
