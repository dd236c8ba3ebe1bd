//! One destination: a queue and a task that posts its events in order,
//! retrying each with exponential backoff before going on to the next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vela_config::WebhooksConfig;

use super::{now_secs, sign};
use crate::services::metrics::Metrics;

/// A serialized event, shared between destinations.
#[derive(Debug)]
pub(super) struct Payload {
    pub event: &'static str,
    pub body: Arc<[u8]>,
}

/// A destination's queue.
pub(super) struct Destination {
    url: Arc<str>,
    tx: mpsc::Sender<Arc<Payload>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
    /// Events dropped on a full queue (logged at powers of two, not each).
    dropped: std::sync::atomic::AtomicU64,
}

/// How a destination posts.
struct Poster {
    url: Arc<str>,
    client: reqwest::Client,
    api_key: String,
    api_secret: String,
    max_attempts: u32,
    retry_initial: Duration,
    retry_max: Duration,
    metrics: Arc<Metrics>,
}

impl Destination {
    pub fn spawn(
        url: String,
        config: &WebhooksConfig,
        api_key: &str,
        api_secret: &str,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Destination {
        let (tx, rx) = mpsc::channel(config.queue_size as usize);
        let url: Arc<str> = Arc::from(url);
        let poster = Poster {
            url: url.clone(),
            client,
            api_key: api_key.to_owned(),
            api_secret: api_secret.to_owned(),
            max_attempts: config.max_attempts,
            retry_initial: Duration::from_millis(config.retry_initial_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(poster.run(rx));
        Destination {
            url,
            tx,
            task,
            metrics,
            dropped: Default::default(),
        }
    }

    /// Queues an event; a full queue drops it (counted as a failure).
    pub fn queue(&self, p: Arc<Payload>) {
        if self.tx.try_send(p).is_err() {
            self.metrics.webhook_failed();
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(url = %self.url, dropped = n, "webhook queue full; events dropped");
            }
        }
    }

    /// No more events: the task finishes what is queued.
    pub fn close(self) -> JoinHandle<()> {
        drop(self.tx);
        self.task
    }
}

impl Poster {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Payload>>) {
        while let Some(p) = rx.recv().await {
            self.deliver(&p).await;
        }
    }

    /// Posts one event until it is accepted (2xx) or the attempts run out.
    async fn deliver(&self, p: &Payload) {
        let mut wait = self.retry_initial;
        for attempt in 1..=self.max_attempts {
            match self.post(p, attempt).await {
                Ok(()) => {
                    self.metrics.webhook_delivered();
                    return;
                }
                Err(e) => {
                    tracing::info!(url = %self.url, event = p.event, attempt, error = %e, "webhook delivery failed");
                }
            }
            if attempt < self.max_attempts {
                self.metrics.webhook_retried();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(self.retry_max);
            }
        }
        self.metrics.webhook_failed();
        tracing::warn!(url = %self.url, event = p.event, attempts = self.max_attempts, "webhook given up");
    }

    async fn post(&self, p: &Payload, attempt: u32) -> Result<(), String> {
        let auth = sign::sign(&self.api_key, &self.api_secret, &p.body, now_secs())?;
        let r = self
            .client
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/webhook+json")
            .header(reqwest::header::AUTHORIZATION, auth)
            .header("X-Vela-Event", p.event)
            .header("X-Vela-Attempt", attempt.to_string())
            .body(reqwest::Body::from(p.body.to_vec()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", r.status()))
        }
    }
}
