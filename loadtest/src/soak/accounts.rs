//! The soak's account traffic: people signing up, logging in and out,
//! refreshing tokens, editing their address books, setting presence,
//! linking up, opening device sockets, and calling each other now and then
//! (the answered calls join their call rooms with media).
//!
//! One task owns the people ([`World`]) and acts once per tick; device
//! sockets and calls run as tasks of their own, each bounded in time. Every
//! answer the server gives is checked against the statuses that action
//! expects; anything else is counted as a failure and its first
//! occurrences kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::participant::Engine;
use crate::scenario::{Planned, Signaling};
use crate::signal::{self, JoinOutcome, SignalContext};

/// Every HTTP request and WebSocket step gives up after this.
const STEP: Duration = Duration::from_secs(10);
/// Access tokens live 15 minutes by default: refresh well before.
const REFRESH_AFTER: Duration = Duration::from_secs(8 * 60);
const PASSWORD: &str = "soak test password";

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
    base: String,
    tally: Arc<Tally>,
}

type Answer = Result<(u16, Value), String>;

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

    async fn call(
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
    async fn act(
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
    async fn act_from(
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

/// One signed-in device.
#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
    at: Instant,
}

impl Session {
    fn from_body(v: &Value) -> Option<Session> {
        Some(Session {
            access: v["access_token"].as_str()?.to_owned(),
            refresh: v["refresh_token"].as_str()?.to_owned(),
            at: Instant::now(),
        })
    }
}

/// One person: an account, a primary device (never logged out, so the
/// sockets and calls that borrow its token keep working) and a few more
/// that come and go, and an address book.
struct Person {
    name: String,
    account: i64,
    addr: String,
    primary: Session,
    others: Vec<Session>,
    /// (id, version) of the live address book entries.
    contacts: Vec<(i64, i64)>,
}

/// Shapes of the account traffic.
#[derive(Debug, Clone)]
pub struct AccountLoad {
    /// People signed up at the start.
    pub people: usize,
    /// Most people (sign-ups stop there).
    pub max_people: usize,
    /// One account action this often.
    pub every: Duration,
    /// A device socket opens this often (while fewer than `max_sockets` are open).
    pub socket_every: Duration,
    /// Device sockets open at once, at most.
    pub max_sockets: usize,
    /// A call is placed this often (while fewer than two run).
    pub call_every: Duration,
    /// How long an answered call lasts.
    pub call_hold: Duration,
    /// The server's ring timeout (a missed call waits that long).
    pub ring_timeout: Duration,
}

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

/// The people and everything they do.
pub struct World {
    api: Api,
    tally: Arc<Tally>,
    joiner: Arc<Joiner>,
    load: AccountLoad,
    run_id: String,
    people: Vec<Person>,
    signups: usize,
    /// Mutual contacts, as index pairs (low, high).
    links: HashSet<(usize, usize)>,
    /// People in a call task now.
    busy: Arc<Mutex<HashSet<usize>>>,
    rng: fastrand::Rng,
    step: u64,
    calls_placed: u64,
}

/// The order actions come in; repeated entries come more often.
const ACTIONS: [&str; 16] = [
    "contact_create",
    "presence",
    "contact_edit",
    "refresh",
    "login",
    "contact_edit",
    "reads",
    "contact_delete",
    "logout",
    "presence",
    "contact_stale_edit",
    "signup",
    "link",
    "contact_create",
    "unlink",
    "reads",
];

impl World {
    /// A world of nobody yet; [`World::run`] signs the first people up.
    pub fn new(
        api: Api,
        tally: Arc<Tally>,
        joiner: Arc<Joiner>,
        load: AccountLoad,
        run_id: &str,
        seed: u64,
    ) -> World {
        World {
            api,
            tally,
            joiner,
            load,
            run_id: run_id.to_owned(),
            people: Vec::new(),
            signups: 0,
            links: HashSet::new(),
            busy: Arc::new(Mutex::new(HashSet::new())),
            rng: fastrand::Rng::with_seed(seed),
            step: 0,
            calls_placed: 0,
        }
    }

    /// Acts until `stop` turns true, then waits for its sockets and calls
    /// (each ends within its own bound; calls hang up early on `stop`).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        for _ in 0..self.load.people {
            self.signup().await;
        }
        for i in (0..self.people.len().saturating_sub(1)).step_by(2) {
            self.link(i, i + 1).await;
        }
        let mut tasks = JoinSet::new();
        let mut act = tokio::time::interval(self.load.every);
        let mut socket = tokio::time::interval(self.load.socket_every);
        let mut call = tokio::time::interval(self.load.call_every);
        for t in [&mut act, &mut socket, &mut call] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let sockets = Arc::new(AtomicU32::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                _ = act.tick() => self.act().await,
                _ = socket.tick() => {
                    if (sockets.load(Ordering::Relaxed) as usize) < self.load.max_sockets
                        && let Some(i) = self.pick()
                        && let Some(token) = self.primary_token(i).await
                    {
                        let hold = Duration::from_millis(self.rng.u64(4_000..20_000));
                        let (api, n, stop) = (self.api.clone(), sockets.clone(), stop.clone());
                        n.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(async move {
                            device_socket(&api, &token, hold, stop).await;
                            n.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                }
                _ = call.tick() => {
                    if calls.load(Ordering::Relaxed) < 2
                        && let Some(c) = self.prepare_call().await
                    {
                        let n = calls.clone();
                        n.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(async move {
                            c.run().await;
                            n.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(60), drain)
            .await
            .is_err()
        {
            self.tally.failed(
                "shutdown",
                "sockets or calls still running 60 s after the end",
            );
        }
    }

    /// A random person, if any.
    fn pick(&mut self) -> Option<usize> {
        (!self.people.is_empty()).then(|| self.rng.usize(..self.people.len()))
    }

    /// A random person not in a call task.
    fn pick_free(&mut self, not: Option<usize>) -> Option<usize> {
        let busy = self.busy.lock().map(|b| b.clone()).unwrap_or_default();
        let free: Vec<usize> = (0..self.people.len())
            .filter(|i| !busy.contains(i) && Some(*i) != not)
            .collect();
        (!free.is_empty()).then(|| free[self.rng.usize(..free.len())])
    }

    /// The primary device's access token, refreshed first when old.
    async fn primary_token(&mut self, i: usize) -> Option<String> {
        if self.people[i].primary.at.elapsed() > REFRESH_AFTER {
            let refresh = self.people[i].primary.refresh.clone();
            if let Some(s) = self.refresh_token(&refresh).await {
                self.people[i].primary = s;
            }
        }
        Some(self.people[i].primary.access.clone())
    }

    async fn refresh_token(&self, refresh: &str) -> Option<Session> {
        let (_, v) = self
            .api
            .act(
                "refresh",
                reqwest::Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": refresh})),
                &[200],
            )
            .await?;
        let s = Session::from_body(&v);
        if s.is_none() {
            self.tally
                .failed("refresh", &format!("unreadable answer {v}"));
        }
        s
    }

    async fn act(&mut self) {
        let action = ACTIONS[(self.step % ACTIONS.len() as u64) as usize];
        self.step += 1;
        if action == "signup" {
            if self.people.len() < self.load.max_people {
                self.signup().await;
            }
            return;
        }
        let Some(i) = self.pick() else { return };
        let Some(token) = self.primary_token(i).await else {
            return;
        };
        let api = self.api.clone();
        use reqwest::Method as M;
        match action {
            "contact_create" => {
                if self.people[i].contacts.len() >= 30 {
                    return self.delete_contact(i, &token).await;
                }
                let n = self.rng.u32(..100_000);
                // Any account may be linked by its username.
                let linked = self.pick().map(|j| self.people[j].name.clone());
                let body = json!({
                    "display_name": format!("Contact {n}"),
                    "phones": [{"label": "mobile", "value": format!("+44 20 7946 {:04}", n % 10_000)}],
                    "emails": [{"label": "work", "value": format!("c{n}@example.com")}],
                    "groups": ["soak"],
                    "linked_username": linked,
                    "notes": "x".repeat(self.rng.usize(0..400)),
                });
                if let Some((_, v)) = api
                    .act(
                        action,
                        M::POST,
                        "/api/v1/contacts",
                        Some(&token),
                        Some(body),
                        &[201],
                    )
                    .await
                    && let (Some(id), Some(ver)) = (v["id"].as_i64(), v["version"].as_i64())
                {
                    self.people[i].contacts.push((id, ver));
                }
            }
            "contact_edit" | "contact_stale_edit" => {
                let list = &self.people[i].contacts;
                if list.is_empty() {
                    return;
                }
                let k = self.rng.usize(..list.len());
                let (id, ver) = list[k];
                let stale = action == "contact_stale_edit" && ver > 1;
                let body = json!({
                    "display_name": format!("Edited {}", self.rng.u32(..100_000)),
                    "favorite": self.rng.bool(),
                    "version": if stale { ver - 1 } else { ver },
                });
                let path = format!("/api/v1/contacts/{id}");
                // A stale version is refused (409), changing nothing.
                let expect: &[u16] = if stale { &[409] } else { &[200] };
                if let Some((_, v)) = api
                    .act(action, M::PUT, &path, Some(&token), Some(body), expect)
                    .await
                    && !stale
                    && let Some(nv) = v["version"].as_i64()
                {
                    self.people[i].contacts[k].1 = nv;
                }
            }
            "contact_delete" => self.delete_contact(i, &token).await,
            "presence" => {
                let status = ["online", "away", "dnd"][self.rng.usize(..3)];
                let body =
                    json!({"status": status, "text": format!("soak {}", self.rng.u32(..1000))});
                api.act(
                    action,
                    M::PUT,
                    "/api/v1/presence",
                    Some(&token),
                    Some(body),
                    &[200],
                )
                .await;
            }
            "refresh" => {
                // One of the other devices if any, else the primary.
                let p = &self.people[i];
                let (k, refresh) = match p.others.len() {
                    0 => (None, p.primary.refresh.clone()),
                    n => {
                        let k = self.rng.usize(..n);
                        (Some(k), p.others[k].refresh.clone())
                    }
                };
                if let Some(s) = self.refresh_token(&refresh).await {
                    match k {
                        Some(k) => self.people[i].others[k] = s,
                        None => self.people[i].primary = s,
                    }
                }
            }
            "login" => {
                let kind = ["phone", "desktop", "web"][self.rng.usize(..3)];
                let p = &self.people[i];
                let body = json!({
                    "username": p.name, "password": PASSWORD,
                    "device": {"kind": kind, "label": "soak"},
                });
                let addr = p.addr.clone();
                if let Some((_, v)) = api
                    .act_from(
                        action,
                        M::POST,
                        "/api/v1/auth/login",
                        None,
                        Some(body),
                        &[200],
                        Some(&addr),
                    )
                    .await
                    && let Some(s) = Session::from_body(&v)
                {
                    self.people[i].others.push(s);
                }
                // At most three other devices: the oldest signs out.
                if self.people[i].others.len() > 3 {
                    self.logout(i).await;
                }
            }
            "logout" => self.logout(i).await,
            "reads" => {
                for path in [
                    "/api/v1/me",
                    "/api/v1/devices",
                    "/api/v1/presence",
                    "/api/v1/contacts",
                    "/api/v1/contacts/changes?since=0&limit=50",
                    "/api/v1/contact-requests",
                    "/api/v1/mutual-contacts",
                    "/api/v1/calls/history?limit=20",
                    "/api/v1/calls/missed-count",
                ] {
                    api.act(action, M::GET, path, Some(&token), None, &[200])
                        .await;
                }
            }
            "link" => {
                if let Some(j) = self.pick()
                    && j != i
                    && !self.links.contains(&(i.min(j), i.max(j)))
                {
                    self.link(i, j).await;
                }
            }
            "unlink" => {
                let mine: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .copied()
                    .filter(|(a, b)| *a == i || *b == i)
                    .collect();
                if mine.is_empty() {
                    return;
                }
                let pair = mine[self.rng.usize(..mine.len())];
                let other = if pair.0 == i { pair.1 } else { pair.0 };
                let path = format!("/api/v1/mutual-contacts/{}", self.people[other].account);
                if api
                    .act(action, M::DELETE, &path, Some(&token), None, &[204])
                    .await
                    .is_some()
                {
                    self.links.remove(&pair);
                }
            }
            _ => {}
        }
    }

    async fn delete_contact(&mut self, i: usize, token: &str) {
        let list = &self.people[i].contacts;
        if list.is_empty() {
            return;
        }
        let k = self.rng.usize(..list.len());
        let (id, ver) = list[k];
        let path = format!("/api/v1/contacts/{id}?version={ver}");
        if self
            .api
            .act(
                "contact_delete",
                reqwest::Method::DELETE,
                &path,
                Some(token),
                None,
                &[200],
            )
            .await
            .is_some()
        {
            self.people[i].contacts.swap_remove(k);
        }
    }

    async fn logout(&mut self, i: usize) {
        if self.people[i].others.is_empty() {
            return;
        }
        let s = self.people[i].others.remove(0);
        // A device idle for longer than an access token lives refreshes first.
        let access = if s.at.elapsed() > REFRESH_AFTER {
            match self.refresh_token(&s.refresh).await {
                Some(n) => n.access,
                None => return,
            }
        } else {
            s.access
        };
        self.api
            .act(
                "logout",
                reqwest::Method::POST,
                "/api/v1/auth/logout",
                Some(&access),
                None,
                &[204],
            )
            .await;
    }

    async fn signup(&mut self) {
        let n = self.signups;
        self.signups += 1;
        let name = format!("soak{}-{n}", self.run_id);
        let addr = format!("10.77.{}.{}", n / 250, n % 250 + 1);
        use reqwest::Method as M;
        let body =
            json!({"username": name, "password": PASSWORD, "display_name": format!("Soak {n}")});
        let Some((_, acc)) = self
            .api
            .act_from(
                "signup",
                M::POST,
                "/api/v1/accounts",
                None,
                Some(body),
                &[201],
                Some(&addr),
            )
            .await
        else {
            return;
        };
        let body = json!({
            "username": name, "password": PASSWORD,
            "device": {"kind": "phone", "label": "primary"},
        });
        let Some((_, v)) = self
            .api
            .act_from(
                "login",
                M::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
                &[200],
                Some(&addr),
            )
            .await
        else {
            return;
        };
        let (Some(account), Some(primary)) = (acc["id"].as_i64(), Session::from_body(&v)) else {
            self.tally
                .failed("signup", &format!("unreadable answers {acc} {v}"));
            return;
        };
        self.people.push(Person {
            name,
            account,
            addr,
            primary,
            others: Vec::new(),
            contacts: Vec::new(),
        });
    }

    /// `a` asks `b`, `b` accepts: mutual contacts.
    async fn link(&mut self, a: usize, b: usize) {
        let (Some(ta), Some(tb)) = (self.primary_token(a).await, self.primary_token(b).await)
        else {
            return;
        };
        use reqwest::Method as M;
        let body = json!({"username": self.people[b].name, "message": "hi"});
        let Some((_, v)) = self
            .api
            .act(
                "link",
                M::POST,
                "/api/v1/contact-requests",
                Some(&ta),
                Some(body),
                &[201],
            )
            .await
        else {
            return;
        };
        let Some(id) = v["request"]["id"].as_i64() else {
            self.tally.failed("link", &format!("no request id in {v}"));
            return;
        };
        let path = format!("/api/v1/contact-requests/{id}/accept");
        if self
            .api
            .act("link", M::POST, &path, Some(&tb), Some(json!({})), &[200])
            .await
            .is_some()
        {
            self.links.insert((a.min(b), a.max(b)));
        }
    }

    async fn prepare_call(&mut self) -> Option<Call> {
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
struct Call {
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
    async fn run(self) {
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

/// A device socket: authenticates, waits for `ready`, sends heartbeats and
/// sets its presence for `hold` (or until `stop`), then closes.
async fn device_socket(api: &Api, token: &str, hold: Duration, mut stop: watch::Receiver<bool>) {
    let r = async {
        let url = format!("{}/api/v1/ws", api.base.replacen("http", "ws", 1));
        let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let send = |v: Value| Message::Text(v.to_string().into());
        ws.send(send(json!({"type": "auth", "token": token})))
            .await
            .map_err(|e| e.to_string())?;
        let mut ready = false;
        let end = tokio::time::Instant::now() + hold;
        let mut beat = tokio::time::interval(Duration::from_secs(2));
        let mut pongs = 0u32;
        let mut sent = 0u32;
        let mut presence_set = false;
        loop {
            tokio::select! {
                m = tokio::time::timeout(STEP, ws.next()) => match m {
                    Err(_) => return Err("nothing from the server for 10 s".into()),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                        match v["type"].as_str() {
                            Some("ready") => ready = true,
                            Some("pong") => pongs += 1,
                            Some("error") => return Err(format!("error: {v}")),
                            Some("session_revoked" | "account_disabled") => {
                                return Err(format!("closed by the server: {v}"));
                            }
                            _ => {}
                        }
                    }
                    Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed by the server: {f:?}")),
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(None) => return Err("connection ended".into()),
                },
                _ = beat.tick(), if ready => {
                    let msg = if presence_set {
                        json!({"type": "heartbeat"})
                    } else {
                        presence_set = true;
                        json!({"type": "set_presence", "status": "online", "text": "on a socket"})
                    };
                    ws.send(send(msg)).await.map_err(|e| e.to_string())?;
                    sent += 1;
                }
                _ = tokio::time::sleep_until(end) => break,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
        }
        if !ready {
            return Err("no ready".into());
        }
        // Every heartbeat but the first (a set_presence) is answered.
        if sent > 2 && pongs == 0 {
            return Err(format!("{sent} heartbeats, no pong"));
        }
        let _ = ws.close(None).await;
        Ok::<_, String>(())
    }
    .await;
    match r {
        Ok(()) => api.tally.ok("device_socket"),
        Err(e) => api.tally.failed("device_socket", &e),
    }
}
