//! Calls between two people: invite, then answered (both join the call's
//! room with media for a while), declined, cancelled or left to ring out;
//! each ends checked against the caller's call history. And the room
//! members calls (and the soak's rooms) start.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{Api, STEP, World};
use crate::participant::Engine;
use crate::scenario::{Planned, Signaling};
use crate::signal::{self, JoinOutcome, SignalContext};

/// Room members the calls start (their joins are counted with the others').
pub struct Joiner {
    /// The signaling context (tokens, video, base URL).
    pub ctx: Arc<SignalContext>,
    /// The engine the members' connections run on.
    pub engine: Arc<Engine>,
    /// Join outcomes go here.
    pub out: mpsc::UnboundedSender<JoinOutcome>,
    /// Participant ids, unique in the engine.
    pub next_id: AtomicU32,
}

/// A participant in a room, until it is told to leave.
pub struct Member {
    /// Participant index (engine id).
    pub id: u32,
    leave: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Tells it to leave; the returned task ends once it left (bounded by
    /// the signaling's own timeouts).
    pub fn leave(self) -> tokio::task::JoinHandle<()> {
        let _ = self.leave.send(true);
        self.task
    }
}

impl Joiner {
    /// Starts `p` (its id is assigned here) joining at once.
    pub fn join(&self, mut p: Planned) -> Member {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        p.id = id;
        p.join_at = Duration::ZERO;
        if p.identity.is_empty() {
            p.identity = format!("s{id}");
        }
        let (leave, rx) = watch::channel(false);
        let task = tokio::spawn(signal::participant(
            p,
            self.ctx.clone(),
            self.engine.clone(),
            tokio::time::Instant::now(),
            rx,
            self.out.clone(),
        ));
        Member { id, leave, task }
    }
}

/// A participant that publishes audio and video and receives the room.
pub fn member_plan(room: &str, signaling: Signaling, access_token: Option<String>) -> Planned {
    let publishes = signaling != Signaling::Whep;
    Planned {
        id: 0,
        node: 0,
        room_index: 0,
        room: room.to_owned(),
        identity: String::new(),
        audio: publishes,
        video: publishes,
        subscribe: signaling != Signaling::Whip,
        signaling,
        join_at: Duration::ZERO,
        access_token,
    }
}

impl World {
    /// Two free people and the kind of call they will have (in turn:
    /// mostly answered), marked busy until the call ends.
    pub(super) async fn prepare_call(&mut self) -> Option<Call> {
        let a = self.pick_free(None)?;
        let b = self.pick_free(Some(a))?;
        let (ta, tb) = (self.primary_token(a).await?, self.primary_token(b).await?);
        if let Ok(mut busy) = self.busy.lock() {
            busy.insert(a);
            busy.insert(b);
        }
        // Mostly answered (with media in the call room); some declined,
        // cancelled, or left to ring out.
        let kind = [
            CallKind::Answered,
            CallKind::Answered,
            CallKind::Declined,
            CallKind::Answered,
            CallKind::Cancelled,
            CallKind::Answered,
            CallKind::Answered,
            CallKind::Missed,
        ][(self.calls_placed % 8) as usize];
        self.calls_placed += 1;
        Some(Call {
            api: self.api.clone(),
            joiner: self.joiner.clone(),
            kind,
            caller: ta,
            callee: tb,
            callee_account: self.people[b].account,
            hold: self.load.call_hold,
            ring_timeout: self.load.ring_timeout,
            busy: self.busy.clone(),
            people: (a, b),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Answered,
    Declined,
    Cancelled,
    Missed,
}

impl CallKind {
    fn name(self) -> &'static str {
        match self {
            CallKind::Answered => "call_answered",
            CallKind::Declined => "call_declined",
            CallKind::Cancelled => "call_cancelled",
            CallKind::Missed => "call_missed",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            CallKind::Answered => "answered",
            CallKind::Declined => "declined",
            CallKind::Cancelled => "cancelled",
            CallKind::Missed => "missed",
        }
    }
}

/// One call from invite to its end.
pub(super) struct Call {
    api: Api,
    joiner: Arc<Joiner>,
    kind: CallKind,
    caller: String,
    callee: String,
    callee_account: i64,
    hold: Duration,
    ring_timeout: Duration,
    busy: Arc<Mutex<HashSet<usize>>>,
    people: (usize, usize),
}

impl Call {
    pub(super) async fn run(self) {
        let name = self.kind.name();
        if let Err(e) = self.steps().await {
            self.api.tally.failed(name, &e);
        } else {
            self.api.tally.ok(name);
        }
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.people.0);
            busy.remove(&self.people.1);
        }
    }

    async fn post(&self, path: &str, token: &str, body: Value, ok: u16) -> Result<Value, String> {
        match self
            .api
            .call(reqwest::Method::POST, path, Some(token), Some(body), None)
            .await
        {
            Ok((s, v)) if s == ok => Ok(v),
            Ok((s, v)) => Err(format!("POST {path}: {s} {v}")),
            Err(e) => Err(format!("POST {path}: {e}")),
        }
    }

    async fn steps(&self) -> Result<(), String> {
        let v = self
            .post(
                "/api/v1/calls",
                &self.caller,
                json!({"to": [self.callee_account], "video": true}),
                201,
            )
            .await?;
        let id = v["call"]["id"].as_i64().ok_or(format!("no call id: {v}"))?;
        let room = v["room"]
            .as_str()
            .ok_or(format!("no room: {v}"))?
            .to_owned();
        let mut members = Vec::new();
        match self.kind {
            CallKind::Answered => {
                let plan = |t: &str| member_plan(&room, Signaling::Ws, Some(t.to_owned()));
                members.push(self.joiner.join(plan(&self.caller)));
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.post(
                    &format!("/api/v1/calls/{id}/accept"),
                    &self.callee,
                    json!({}),
                    200,
                )
                .await?;
                members.push(self.joiner.join(plan(&self.callee)));
                tokio::time::sleep(self.hold).await;
                // Hanging up: both close their room sessions.
                let left: Vec<_> = members.drain(..).map(Member::leave).collect();
                for t in left {
                    let _ = tokio::time::timeout(STEP, t).await;
                }
            }
            CallKind::Declined => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.post(
                    &format!("/api/v1/calls/{id}/decline"),
                    &self.callee,
                    json!({}),
                    200,
                )
                .await?;
            }
            CallKind::Cancelled => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.post(
                    &format!("/api/v1/calls/{id}/cancel"),
                    &self.caller,
                    json!({}),
                    200,
                )
                .await?;
            }
            CallKind::Missed => tokio::time::sleep(self.ring_timeout).await,
        }
        // The call ends, with the outcome it had, in the caller's history.
        let end = Instant::now() + STEP;
        loop {
            let r = self
                .api
                .call(
                    reqwest::Method::GET,
                    "/api/v1/calls/history?limit=20",
                    Some(&self.caller),
                    None,
                    None,
                )
                .await;
            if let Ok((200, v)) = &r
                && let Some(rec) = v["calls"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["call_id"] == id))
            {
                return if rec["outcome"] == self.kind.outcome() {
                    Ok(())
                } else {
                    Err(format!(
                        "call {id} ended {}, not {}",
                        rec["outcome"],
                        self.kind.outcome()
                    ))
                };
            }
            if Instant::now() > end {
                return Err(format!("call {id} not in the caller's history: {r:?}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
