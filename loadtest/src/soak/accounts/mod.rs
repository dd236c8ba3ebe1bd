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

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

mod api;
mod call;
mod device;

pub use api::{ActionCount, Api, Tally};
pub use call::{Joiner, Member, member_plan};
use device::device_socket;

/// Every HTTP request and WebSocket step gives up after this.
const STEP: Duration = Duration::from_secs(10);
/// Access tokens live 15 minutes by default: refresh well before.
const REFRESH_AFTER: Duration = Duration::from_secs(8 * 60);
const PASSWORD: &str = "soak test password";

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
                if let Some(v) = self.log_in(&p.name, &p.addr, kind, "soak").await
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
        let Some(v) = self.log_in(&name, &addr, "phone", "primary").await else {
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

    /// Logs `name` in from `addr` on a new device (counted as `login`): the
    /// answer's body.
    async fn log_in(&self, name: &str, addr: &str, kind: &str, label: &str) -> Option<Value> {
        let body = json!({
            "username": name, "password": PASSWORD,
            "device": {"kind": kind, "label": label},
        });
        let (_, v) = self
            .api
            .act_from(
                "login",
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
                &[200],
                Some(addr),
            )
            .await?;
        Some(v)
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
}
