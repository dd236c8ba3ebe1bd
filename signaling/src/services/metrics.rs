//! The counters kept outside the media core (the join-time histogram, the
//! webhook counters), rendered in Prometheus text format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the join-time histogram's buckets, in milliseconds.
const JOIN_BUCKETS_MS: [u64; 9] = [25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Counters kept outside the media core.
#[derive(Debug, Default)]
pub struct Metrics {
    join_buckets: [AtomicU64; JOIN_BUCKETS_MS.len()],
    join_count: AtomicU64,
    join_sum_us: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhooks_failed: AtomicU64,
    webhooks_retried: AtomicU64,
    proxied_now: AtomicU64,
    proxied_total: AtomicU64,
    redirects: AtomicU64,
}

impl Metrics {
    /// A participant's media connected this long after its join.
    pub fn observe_join_time(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        if let Some(i) = JOIN_BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.join_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.join_count.fetch_add(1, Ordering::Relaxed);
        self.join_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// A webhook was accepted by its destination.
    pub fn webhook_delivered(&self) {
        self.webhooks_delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook was given up (attempts exhausted, or its queue was full).
    pub fn webhook_failed(&self) {
        self.webhooks_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook attempt failed and will be retried.
    pub fn webhook_retried(&self) {
        self.webhooks_retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A room socket is being relayed to the room's node (cluster).
    pub fn proxy_opened(&self) {
        self.proxied_now.fetch_add(1, Ordering::Relaxed);
        self.proxied_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A relayed room socket closed.
    pub fn proxy_closed(&self) {
        let _ = self
            .proxied_now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A request was redirected (307) to the room's node (cluster).
    pub fn redirected(&self) {
        self.redirects.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the counters to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let name = "vela_join_time_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a join to its media connected (ICE and DTLS done)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in JOIN_BUCKETS_MS.iter().zip(&self.join_buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / 1000.0
            );
        }
        let count = self.join_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.join_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        for (n, help, v) in [
            (
                "webhooks_delivered_total",
                "Webhook events accepted by a destination.",
                &self.webhooks_delivered,
            ),
            (
                "webhook_failures_total",
                "Webhook events given up: attempts exhausted or queue full.",
                &self.webhooks_failed,
            ),
            (
                "webhook_retries_total",
                "Webhook attempts that failed and were retried.",
                &self.webhooks_retried,
            ),
        ] {
            let _ = writeln!(out, "# HELP vela_{n} {help}");
            let _ = writeln!(out, "# TYPE vela_{n} counter");
            let _ = writeln!(out, "vela_{n} {}", v.load(Ordering::Relaxed));
        }
        for (n, kind, help, v) in [
            (
                "cluster_proxied_room_sockets",
                "gauge",
                "Room sockets relayed to the room's node now.",
                &self.proxied_now,
            ),
            (
                "cluster_proxied_room_sockets_total",
                "counter",
                "Room sockets relayed to the room's node.",
                &self.proxied_total,
            ),
            (
                "cluster_redirects_total",
                "counter",
                "Requests redirected (307) to the room's node.",
                &self.redirects,
            ),
        ] {
            let _ = writeln!(out, "# HELP vela_{n} {help}");
            let _ = writeln!(out, "# TYPE vela_{n} {kind}");
            let _ = writeln!(out, "vela_{n} {}", v.load(Ordering::Relaxed));
        }
    }
}
