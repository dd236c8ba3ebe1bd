//! Watches the shards' driver tasks: a driver that panics takes its rooms
//! with it, and must not leave a process that looks alive.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinHandle;

/// A media driver ended without being asked to (it panicked): every room
/// and participant of its shard is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("media shard {shard} failed: {reason}")]
pub struct DriverFailed {
    /// The shard's index.
    pub shard: usize,
    /// The panic's message, when it had one.
    pub reason: String,
}

/// Ends when every driver has stopped (Ok), or as soon as one has failed
/// (the others keep running; the caller decides what to do).
pub(crate) async fn supervise(drivers: Vec<JoinHandle<()>>) -> Result<(), DriverFailed> {
    let mut running: FuturesUnordered<_> = drivers
        .into_iter()
        .enumerate()
        .map(|(shard, task)| async move { (shard, task.await) })
        .collect();
    while let Some((shard, ended)) = running.next().await {
        let Err(e) = ended else { continue };
        let reason = if e.is_panic() {
            let payload = e.into_panic();
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".into())
        } else {
            // Cancelled: only a runtime shutting down does that.
            "cancelled".into()
        };
        tracing::error!(shard, reason, "media driver failed: its rooms are gone");
        return Err(DriverFailed { shard, reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_driver_is_reported_at_once() {
        let quiet = tokio::spawn(std::future::pending::<()>());
        let failing = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("boom in the core");
        });
        let r = tokio::time::timeout(Duration::from_secs(5), supervise(vec![quiet, failing])).await;
        assert_eq!(
            r.expect("reported while the other driver still runs"),
            Err(DriverFailed {
                shard: 1,
                reason: "boom in the core".into()
            })
        );
    }

    #[tokio::test]
    async fn drivers_that_stop_as_asked_are_no_failure() {
        let a = tokio::spawn(async {});
        let b = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        let r = tokio::time::timeout(Duration::from_secs(5), supervise(vec![a, b])).await;
        assert_eq!(r.expect("ends when all have stopped"), Ok(()));
    }
}
