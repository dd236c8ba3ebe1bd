//! Webhooks: room and call events POSTed to the configured URLs, signed,
//! in order per destination, retried with backoff, never in the media
//! driver's way (it hands events over without waiting; see docs/api.md).
//!
//! **In a cluster each event is sent once, not once per node.** Each node
//! sends only what it witnessed: participant and track events come from
//! the media driver of the participant's node, call events from the calls
//! service, which handles each call on one node. A room may be open on
//! several nodes (issue 19): its `room_started` goes out from the node
//! that opened it first and its `room_finished` from the last to close it,
//! as the room directory's set of nodes says
//! ([`RedisDirectory::opened`], [`RedisDirectory::closed`]); a node that
//! closed its part while others held the room asks once more a node
//! timeout later, so that a room whose last nodes died still finishes. No event comes from a periodic job or from reading the
//! shared store on every node, with one exception: a call that a crash left
//! open is ended (`call_ended`) by whichever node recovers it, and two
//! nodes may both. So `call_ended`, which a call sends once, has an id
//! derived from the call ([`WebhookEvent::once_per_cluster`]), and a
//! cluster node sends it only after claiming the id in Redis
//! (`SET vela:webhook:<id> NX PX` a day): the second report is dropped. If
//! Redis does not answer the event is sent anyway: a duplicate with the
//! same id, which receivers drop, rather than a lost end. New events must
//! keep this rule: emitted where the thing happened, or given a derived id.

mod delivery;
mod event;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vela_config::WebhooksConfig;
use vela_media::core::RoomEvent;

pub use event::{ParticipantRef, RoomRef, TrackRef, WebhookEvent};

use crate::domain::call::Notice;
use crate::services::cluster::Cluster;
use crate::services::metrics::Metrics;
use crate::services::room_directory::RedisDirectory;
use delivery::{Destination, Payload};
use event::Translator;

/// How many room events may wait between the media driver and this task.
pub const ROOM_EVENT_QUEUE: usize = 16_384;

/// Hands call notices to the webhook task; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    tx: mpsc::UnboundedSender<Notice>,
}

impl WebhookHandle {
    /// Queues a call event.
    pub fn call(&self, notice: Notice) {
        let _ = self.tx.send(notice);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts the webhook task: it turns `room_events` and call notices into
/// webhook events, records join times, and queues each event for every
/// destination. After `shutdown` it delivers what is queued for up to
/// `timeout_ms` more, then stops.
pub fn spawn(
    config: &WebhooksConfig,
    api_key: &str,
    api_secret: &str,
    metrics: Arc<Metrics>,
    room_events: mpsc::Receiver<RoomEvent>,
    cluster: ClusterView,
    shutdown: watch::Receiver<bool>,
) -> (WebhookHandle, JoinHandle<()>) {
    let (tx, calls) = mpsc::unbounded_channel();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .build()
        .unwrap_or_default();
    let destinations: Vec<Destination> = config
        .urls
        .iter()
        .map(|url| {
            Destination::spawn(
                url.clone(),
                config,
                api_key,
                api_secret,
                client.clone(),
                metrics.clone(),
            )
        })
        .collect();
    let task = tokio::spawn(run(
        destinations,
        metrics,
        room_events,
        calls,
        cluster,
        shutdown,
        Duration::from_millis(config.timeout_ms),
    ));
    (WebhookHandle { tx }, task)
}

/// How long a cluster remembers an event id it sent, to drop later
/// reports of the same event.
const SENT_IDS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Whether this node is the first in the cluster to report `w` (always,
/// for an event only its witness reports, or with one node); claims its id
/// in Redis. Unanswered within a second: sent (a duplicate with the same
/// id beats a lost event).
async fn first_report(cluster: Option<&Cluster>, w: &WebhookEvent) -> bool {
    let Some(cluster) = cluster else {
        return true;
    };
    if !w.once_per_cluster() {
        return true;
    }
    let mut redis = cluster.redis();
    let mut set = redis::cmd("SET");
    set.arg(Cluster::key(&["webhook", &w.id]))
        .arg(&cluster.node().id)
        .arg("NX")
        .arg("PX")
        .arg(SENT_IDS_KEPT.as_millis() as u64);
    let claim = set.query_async::<Option<String>>(&mut redis);
    match tokio::time::timeout(Duration::from_secs(1), claim).await {
        Ok(Ok(claimed)) => {
            if claimed.is_none() {
                tracing::debug!(id = %w.id, event = w.event, "sent by another node already");
            }
            claimed.is_some()
        }
        Ok(Err(e)) => {
            tracing::warn!(id = %w.id, error = %e, "cannot claim a webhook's id: sending it");
            true
        }
        Err(_) => {
            tracing::warn!(id = %w.id, "cannot claim a webhook's id (no answer): sending it");
            true
        }
    }
}

/// Whether a room event is this node's to report: a room's start or end
/// only from the first node to open it and the last to close it. Without
/// an answer from Redis, reported (a duplicate beats a lost event). For a
/// room that others still held, `recheck` gets the room a node timeout
/// later if they all died meanwhile (its end then reported here).
async fn room_report(
    rooms: Option<&RedisDirectory>,
    e: &RoomEvent,
    recheck: &mpsc::UnboundedSender<vela_media::core::RoomId>,
) -> bool {
    let Some(rooms) = rooms else {
        return true;
    };
    let answer = match e {
        RoomEvent::RoomStarted { room } => {
            tokio::time::timeout(Duration::from_secs(1), rooms.opened(room)).await
        }
        RoomEvent::RoomFinished { room } => {
            let last = tokio::time::timeout(Duration::from_secs(1), rooms.closed(room)).await;
            if let Ok(Ok(false)) = last {
                let (rooms, room, recheck) = (rooms.clone(), room.clone(), recheck.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(rooms.recheck_after()).await;
                    if let Ok(true) = rooms.finished_without_report(&room).await {
                        let _ = recheck.send(room);
                    }
                });
            }
            last
        }
        _ => return true,
    };
    match answer {
        Ok(Ok(mine)) => {
            if !mine {
                tracing::debug!(event = ?e, "another node of the room reports this");
            }
            mine
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, event = ?e, "cannot tell whether another node of the room reports this: reporting it");
            true
        }
        Err(_) => {
            tracing::warn!(event = ?e, "cannot tell whether another node of the room reports this (no answer): reporting it");
            true
        }
    }
}

/// What the webhook task knows of the cluster (nothing for one node).
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// For ids of events reported once per cluster.
    pub cluster: Option<Cluster>,
    /// Which nodes hold each room (its start and end reported once).
    pub rooms: Option<RedisDirectory>,
}

async fn run(
    destinations: Vec<Destination>,
    metrics: Arc<Metrics>,
    mut room_events: mpsc::Receiver<RoomEvent>,
    mut calls: mpsc::UnboundedReceiver<Notice>,
    cluster: ClusterView,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let ClusterView { cluster, rooms } = cluster;
    let (recheck_tx, mut rechecks) = mpsc::unbounded_channel();
    let mut translator = Translator::default();
    let dispatch = |e: WebhookEvent| {
        if destinations.is_empty() {
            return;
        }
        match serde_json::to_vec(&e) {
            Ok(body) => {
                let payload = Arc::new(Payload {
                    event: e.event,
                    body: body.into(),
                });
                for d in &destinations {
                    d.queue(payload.clone());
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot serialize a webhook event"),
        }
    };
    // After shutdown, the media driver's last events (everyone left, rooms
    // finished) still come in as it stops: take them for a moment more.
    let mut drain_until = None;
    loop {
        let stopping = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => {
                    let _ = shutdown.wait_for(|s| *s).await;
                }
            }
        };
        tokio::select! {
            e = room_events.recv() => match e {
                Some(e) => {
                    if let RoomEvent::ParticipantConnected { join_time, .. } = &e {
                        metrics.observe_join_time(*join_time);
                    }
                    let ours = room_report(rooms.as_ref(), &e, &recheck_tx).await;
                    let events = translator.room_event(e, now_secs());
                    if ours {
                        for w in events {
                            dispatch(w);
                        }
                    }
                }
                None => break,
            },
            Some(room) = rechecks.recv() => {
                for w in translator.room_event(RoomEvent::RoomFinished { room }, now_secs()) {
                    dispatch(w);
                }
            }
            Some(n) = calls.recv() => {
                let w = translator.call_notice(n, now_secs());
                if !destinations.is_empty() && first_report(cluster.as_ref(), &w).await {
                    dispatch(w);
                }
            }
            () = stopping => match drain_until {
                Some(_) => break,
                None => {
                    drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
            },
        }
    }
    let tasks: Vec<JoinHandle<()>> = destinations.into_iter().map(Destination::close).collect();
    let _ = tokio::time::timeout(grace, futures_util::future::join_all(tasks)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::call::state::Call;
    use crate::domain::ids::AccountId;

    async fn node(redis: &vela_testkit::Redis, id: &str) -> Cluster {
        Cluster::for_test(redis, id, None).await
    }

    fn call(id: i64) -> Box<Call> {
        Box::new(
            serde_json::from_value(serde_json::json!({
                "id": id, "room": format!("call-{id}"), "video": false, "caller": 1,
                "state": "ended", "created_at": 1000, "answered_at": null,
                "ended_at": 2000, "members": []
            }))
            .expect("call"),
        )
    }

    #[tokio::test]
    async fn a_call_end_reported_by_two_nodes_is_sent_once() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut redis = vela_testkit::Redis::start();
            let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
            let ended = |id| Translator::default().call_notice(Notice::Ended { call: call(id) }, 1);
            assert!(first_report(Some(&a), &ended(1)).await);
            assert!(!first_report(Some(&b), &ended(1)).await);
            assert!(!first_report(Some(&a), &ended(1)).await);
            assert!(first_report(Some(&b), &ended(2)).await);
            // Events only their witness reports are never held back.
            let ringing = Translator::default().call_notice(
                Notice::Ringing {
                    call: call(1),
                    account: AccountId(2),
                },
                1,
            );
            assert!(first_report(Some(&a), &ringing).await);
            assert!(first_report(Some(&b), &ringing).await);
            assert!(first_report(None, &ended(1)).await);
            // Redis out of reach: sent (receivers drop the duplicate by id).
            redis.stop();
            assert!(first_report(Some(&a), &ended(1)).await);
        })
        .await
        .expect("timed out");
    }
}
