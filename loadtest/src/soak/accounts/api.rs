//! The account API's client and the tally every answer is counted in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::STEP;

/// Successes and failures of one kind of action.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ActionCount {
    /// Answered as expected.
    pub ok: u64,
    /// Anything else (status, timeout, transport error).
    pub failed: u64,
}

/// What every action reports into.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Debug, Default)]
struct TallyInner {
    actions: BTreeMap<String, ActionCount>,
    errors: Vec<String>,
}

/// The most failures kept verbatim.
const KEEP_ERRORS: usize = 40;

impl Tally {
    /// Counts a success of `action`.
    pub fn ok(&self, action: &str) {
        if let Ok(mut t) = self.inner.lock() {
            t.actions.entry(action.to_owned()).or_default().ok += 1;
        }
    }

    /// Counts a failure of `action`, keeping its description.
    pub fn failed(&self, action: &str, why: &str) {
        if let Ok(mut t) = self.inner.lock() {
            t.actions.entry(action.to_owned()).or_default().failed += 1;
            if t.errors.len() < KEEP_ERRORS {
                let mut why = why.to_owned();
                why.truncate(300);
                t.errors.push(format!("{action}: {why}"));
            }
        }
    }

    /// Totals over every action: (ok, failed).
    pub fn totals(&self) -> (u64, u64) {
        self.inner
            .lock()
            .map(|t| {
                t.actions
                    .values()
                    .fold((0, 0), |(o, f), c| (o + c.ok, f + c.failed))
            })
            .unwrap_or_default()
    }

    /// Counts by action, and the first failures.
    pub fn snapshot(&self) -> (BTreeMap<String, ActionCount>, Vec<String>) {
        self.inner
            .lock()
            .map(|t| (t.actions.clone(), t.errors.clone()))
            .unwrap_or_default()
    }
}

/// A minimal JSON client of the account API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub(super) base: String,
    pub(super) tally: Arc<Tally>,
}

pub(super) type Answer = Result<(u16, Value), String>;

impl Api {
    /// The API at `base` (`http://host:port`), reporting into `tally`.
    pub fn new(base: &str, tally: Arc<Tally>) -> Result<Api, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            tally,
        })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        client_addr: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(a) = client_addr {
            // The soak's server trusts loopback as a proxy: each person
            // signs up from an address of their own, as behind a real proxy.
            req = req.header("x-forwarded-for", a);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Sends a request and counts it under `action`: the body when the
    /// status is one of `expect`, `None` (counted as failed) otherwise.
    pub(super) async fn act(
        &self,
        action: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        expect: &[u16],
    ) -> Option<(u16, Value)> {
        self.act_from(action, method, path, token, body, expect, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn act_from(
        &self,
        action: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        expect: &[u16],
        client_addr: Option<&str>,
    ) -> Option<(u16, Value)> {
        match self
            .call(method.clone(), path, token, body, client_addr)
            .await
        {
            Ok((s, v)) if expect.contains(&s) => {
                self.tally.ok(action);
                Some((s, v))
            }
            Ok((s, v)) => {
                self.tally
                    .failed(action, &format!("{method} {path}: {s} {v}"));
                None
            }
            Err(e) => {
                self.tally.failed(action, &format!("{method} {path}: {e}"));
                None
            }
        }
    }
}
