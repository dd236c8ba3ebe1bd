//! Webhooks: room and call events POSTed to the configured URLs, signed,
//! in order per destination, retried with backoff, never in the media
//! driver's way (it hands events over without waiting; see docs/api.md).

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
use crate::services::metrics::Metrics;
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
        shutdown,
        Duration::from_millis(config.timeout_ms),
    ));
    (WebhookHandle { tx }, task)
}

async fn run(
    destinations: Vec<Destination>,
    metrics: Arc<Metrics>,
    mut room_events: mpsc::Receiver<RoomEvent>,
    mut calls: mpsc::UnboundedReceiver<Notice>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
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
                    for w in translator.room_event(e, now_secs()) {
                        dispatch(w);
                    }
                }
                None => break,
            },
            Some(n) = calls.recv() => dispatch(translator.call_notice(n, now_secs())),
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
