//! The room socket's resume registry: the sessions a new socket may take
//! over with `resume` (docs/protocol.md), by participant id and secret
//! token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocket;
use tokio::sync::mpsc;
use vela_media::core::{ConnectionId, ParticipantId};

/// Sessions a new socket may take over with `resume`, by the participant id
/// the client knows.
#[derive(Clone, Default)]
pub(crate) struct Resumable(Arc<Mutex<HashMap<ParticipantId, ResumeEntry>>>);

pub(crate) struct ResumeEntry {
    pub connection: ConnectionId,
    pub token: String,
    pub tx: mpsc::Sender<WebSocket>,
}

impl Resumable {
    pub(crate) fn insert(&self, participant: ParticipantId, entry: ResumeEntry) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(participant, entry);
        }
    }

    pub(crate) fn remove(&self, participant: ParticipantId, connection: ConnectionId) {
        if let Ok(mut m) = self.0.lock()
            && m.get(&participant)
                .is_some_and(|e| e.connection == connection)
        {
            m.remove(&participant);
        }
    }

    /// Where to hand a new socket, if `token` is the participant's.
    pub(crate) fn sender(
        &self,
        participant: ParticipantId,
        token: &str,
    ) -> Option<mpsc::Sender<WebSocket>> {
        let m = self.0.lock().ok()?;
        let e = m.get(&participant)?;
        same_secret(&e.token, token).then(|| e.tx.clone())
    }

    /// Whether `token` is the participant's resume token.
    pub(crate) fn matches(&self, participant: ParticipantId, token: &str) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(&participant).map(|e| same_secret(&e.token, token)))
            .unwrap_or(false)
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub(crate) fn new_resume_token() -> Option<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
