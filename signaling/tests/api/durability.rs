//! Durability: stop the server and start it again on the same SQLite file;
//! accounts, devices, tokens, contacts and revisions, links, requests and
//! presence texts are all still there. Kill it instead, and the calls it
//! had going on are in their members' histories after the next start (and
//! webhooks say they ended), and who was present has a last-seen time.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::calls;
use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, DeviceClient, Login, StoreFile, start_with};
use serde_json::json;

const PW: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let file = StoreFile::new("durability");
    tokio::time::timeout(Duration::from_secs(60), async {
        // ----- first life -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        let alice = api.user("alice", "phone").await;
        let desk = api.login("alice", PW, "desktop", "Old PC").await;
        let bob = api.user("bob", "web").await;
        let carol = api.user("carol", "web").await;
        api.link(&alice, &bob).await;
        api.post("/api/v1/contact-requests", Some(&carol.access), json!({"username": "alice"}))
            .await
            .ok(201);
        let mut ids = Vec::new();
        for name in ["Ann", "Ben", "Cat"] {
            let c = api
                .post(
                    "/api/v1/contacts",
                    Some(&alice.access),
                    json!({"display_name": name, "phones": [{"value": "+1 555 0100"}], "linked_account": bob.account}),
                )
                .await
                .ok(201);
            ids.push(c["id"].as_i64().unwrap());
        }
        api.put(
            &format!("/api/v1/contacts/{}", ids[0]),
            &alice.access,
            json!({"display_name": "Ann B", "version": 1, "favorite": true}),
        )
        .await
        .ok(200);
        api.delete(&format!("/api/v1/contacts/{}", ids[1]), &alice.access)
            .await
            .ok(200);
        api.put("/api/v1/presence", &alice.access, json!({"text": "on holiday"}))
            .await
            .ok(200);
        api.delete(&format!("/api/v1/devices/{}", desk.device), &alice.access)
            .await
            .ok(204);
        let sock = DeviceClient::connect(&s, &alice.access, None).await;
        let before_shutdown = vela_signaling::ids::now_ms();
        s.shutdown().await;
        drop(sock);

        // ----- second life, same file -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        // The old access token still works (same key, device not revoked).
        let me = api.get("/api/v1/me", &alice.access).await.ok(200);
        assert_eq!(me["username"], "alice");
        // The revoked device stays revoked.
        api.get("/api/v1/me", &desk.access).await.err(401, None);
        api.refresh(&desk.refresh)
            .await
            .err(401, None);
        // The refresh token rotates as before.
        let refreshed = Login::from(
            api.refresh(&alice.refresh)
                .await
                .ok(200),
        );
        assert_eq!(refreshed.device, alice.device);
        // The password still works; the username is still taken.
        let again = api.login("alice", PW, "web", "New tab").await;
        api.post("/api/v1/accounts", None, json!({"username": "alice", "password": PW}))
            .await
            .err(409, Some("username"));
        let devices = api.get("/api/v1/devices", &again.access).await.ok(200);
        let labels: Vec<&str> = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, vec!["alice's phone", "New tab"]);

        // Contacts, versions, revisions and the tombstone.
        let list = api.get("/api/v1/contacts", &again.access).await.ok(200);
        assert_eq!(list["revision"], 5);
        let names: Vec<&str> = list["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["display_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Ann B", "Cat"]);
        let ann = &list["contacts"][0];
        assert_eq!((ann["version"].as_i64(), ann["favorite"].as_bool()), (Some(2), Some(true)));
        assert_eq!(list["contacts"][1]["linked_username"], "bob");
        let changes = api
            .get("/api/v1/contacts/changes?since=3", &again.access)
            .await
            .ok(200);
        let summary: Vec<(i64, bool)> = changes["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_i64().unwrap(), c["deleted"].as_bool().unwrap_or(false)))
            .collect();
        assert_eq!(summary, vec![(ids[0], false), (ids[1], true)]);
        // A stale version is still stale; the next change is revision 6.
        api.put(
            &format!("/api/v1/contacts/{}", ids[0]),
            &again.access,
            json!({"display_name": "Lost", "version": 1}),
        )
        .await
        .err(409, None);
        let c = api
            .post("/api/v1/contacts", Some(&again.access), json!({"display_name": "Dan"}))
            .await
            .ok(201);
        assert_eq!(c["revision"], 6);

        // The link, the pending request, the status text and last-seen time.
        let p = api
            .get(&format!("/api/v1/presence/{}", alice.account), &bob.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "offline");
        assert_eq!(p["text"], "on holiday");
        let last_seen = p["last_seen"].as_i64().unwrap();
        assert!(last_seen >= before_shutdown - 1000, "{last_seen} vs {before_shutdown}");
        api.get(&format!("/api/v1/presence/{}", alice.account), &carol.access)
            .await
            .err(404, None);
        let requests = api.get("/api/v1/contact-requests", &again.access).await.ok(200);
        assert_eq!(requests["incoming"][0]["from"]["username"], "carol");
        s.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_going_on_when_the_server_is_killed_are_in_the_history_after() {
    let file = StoreFile::new("crash");
    tokio::time::timeout(Duration::from_secs(90), async {
        // ----- first life: a separate process, killed -----
        let (mut child, addr) = common::start_binary(&file.location).await;
        let api = Api::at(format!("http://{addr}"));
        let ann = api.user("ann", "phone").await;
        let ben = api.user("ben", "phone").await;
        let cat = api.user("cat", "phone").await;
        let dan = api.user("dan", "phone").await;
        // Ann is online (a device socket) and Ben sees it.
        api.link(&ann, &ben).await;
        let online_at = vela_signaling::ids::now_ms();
        let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws"))
            .await
            .unwrap();
        let mut sock = common::Ws { inner };
        sock.send(json!({"type": "auth", "token": ann.access}))
            .await;
        sock.expect("ready").await;
        let p = api
            .get(&format!("/api/v1/presence/{}", ann.account), &ben.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "online");
        // Ann calls Ben, who answers; Cat calls Dan, who is still rung.
        let answered = calls::call(&api, &ann, &[ben.account]).await;
        calls::act(&api, &ben, answered, "accept").await.ok(200);
        let ringing = calls::call(&api, &cat, &[dan.account]).await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let killed_at = vela_signaling::ids::now_ms();
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        // ----- second life, same file, with a webhook receiver -----
        let (hook, hooks) = receiver().await;
        let on_file = file.config();
        let s = start_with(move |c| {
            on_file(c);
            c.webhooks.urls = vec![hook];
        })
        .await;
        let api = Api::new(&s);
        let ann_r = calls::record(&api, &ann, answered).await;
        let ben_r = calls::record(&api, &ben, answered).await;
        for (r, direction) in [(&ann_r, "outgoing"), (&ben_r, "incoming")] {
            assert_eq!(r["outcome"], "answered", "{r}");
            assert_eq!(r["direction"], direction, "{r}");
            // Ended at the last heartbeat before the kill, after the answer.
            let ended = r["ended_at"].as_i64().unwrap();
            assert!(ended >= r["answered_at"].as_i64().unwrap(), "{r}");
            assert!(ended <= killed_at, "{r}");
        }
        assert_eq!(ben_r["device_id"], ben.device);
        // Ann was last seen between coming online and the kill.
        let p = api
            .get(&format!("/api/v1/presence/{}", ann.account), &ben.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "offline");
        let last_seen = p["last_seen"].as_i64().unwrap();
        assert!((online_at..=killed_at).contains(&last_seen), "{p}");
        drop(sock);
        // The unanswered call ends as a shutdown ends it: cancelled.
        assert_eq!(
            calls::record(&api, &cat, ringing).await["outcome"],
            "cancelled"
        );
        assert_eq!(
            calls::record(&api, &dan, ringing).await["outcome"],
            "cancelled"
        );
        // Integrations learn that both calls ended, as a shutdown would say.
        let ended = |id: i64| {
            hooks
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["event"] == "call_ended" && e["call"]["id"] == id)
                .cloned()
        };
        for _ in 0..100 {
            if ended(answered).is_some() && ended(ringing).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = ended(answered).expect("call_ended for the answered call");
        assert_eq!(e["call"]["state"], "ended", "{e}");
        assert_eq!(e["call"]["ended_at"], ann_r["ended_at"], "{e}");
        let states: Vec<&str> = e["call"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["left", "left"], "{e}");
        let e = ended(ringing).expect("call_ended for the ringing call");
        assert_eq!(e["call"]["members"][1]["state"], "cancelled", "{e}");
        // Once each, and new calls take new ids.
        assert_eq!(calls::history(&api, &ann).await.len(), 1);
        assert_eq!(calls::history(&api, &dan).await.len(), 1);
        let next = calls::call(&api, &ann, &[cat.account]).await;
        assert!(next > ringing && next > answered);
        s.shutdown().await;

        // ----- third life: nothing left over to record again -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        assert_eq!(calls::history(&api, &ann).await.len(), 2);
        assert_eq!(calls::history(&api, &ben).await.len(), 1);
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// A webhook receiver on loopback: the bodies it got.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let into = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let into = into.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    into.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

// ----- a kill in the middle of writes -----
//
// Writers run concurrently against a server process on a store file:
// address books (creates, versioned edits, versioned deletes), status
// texts, contact requests and links, calls (invite, accept, hang up) with
// device sockets open. Each keeps what the server acknowledged (a whole
// answer received) and the one write it had in flight when the answers
// stopped. The process is killed (SIGKILL) while writes are in flight,
// started again on the same file, and everything acknowledged must be
// there with its acknowledged value; the write in flight may have happened
// or not, but wholly. Three kills, at different moments.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// An HTTP client that tolerates a dead server, counting requests in flight.
struct Client {
    http: reqwest::Client,
    base: String,
    in_flight: Arc<AtomicUsize>,
}

type Answer = Result<(u16, Value), String>;

impl Client {
    fn new(addr: &str, in_flight: &Arc<AtomicUsize>) -> Client {
        Client {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://{addr}"),
            in_flight: in_flight.clone(),
        }
    }

    /// The status and JSON body, or why no whole answer arrived (`token`
    /// empty: no Authorization).
    async fn req(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10));
        if !token.is_empty() {
            r = r.bearer_auth(token);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = async {
            let resp = r.send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
        }
        .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    /// A read that must succeed (the server is up).
    async fn get(&self, path: &str, token: &str) -> Value {
        let (s, v) = self.req("GET", path, token, None).await.unwrap();
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }
}

/// Unacknowledged writes, by what the next start showed.
#[derive(Debug, Default, Clone, Copy)]
struct Unacked {
    applied: u64,
    not_applied: u64,
}

impl Unacked {
    fn count(&mut self, applied: bool) {
        if applied {
            self.applied += 1;
        } else {
            self.not_applied += 1;
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Live {
        version: i64,
        name: String,
        favorite: bool,
    },
    Deleted,
}

#[derive(Debug, Clone)]
enum ContactOp {
    Create {
        name: String,
    },
    Edit {
        id: i64,
        based_on: i64,
        name: String,
        favorite: bool,
    },
    Delete {
        id: i64,
        version: i64,
    },
}

/// One account's address book: creates, edits and deletes, each naming the
/// version it was based on.
struct Contacts {
    who: Login,
    entries: BTreeMap<i64, Entry>,
    /// The revision of the last acknowledged change.
    revision: i64,
    pending: Option<ContactOp>,
    n: u64,
    acked: u64,
}

impl Contacts {
    fn live(&self) -> Vec<(i64, i64)> {
        self.entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live { version, .. } => Some((*id, *version)),
                Entry::Deleted => None,
            })
            .collect()
    }

    fn next(&mut self) -> ContactOp {
        self.n += 1;
        let n = self.n;
        let live = self.live();
        let pick = |k: u64| live[(k as usize * 7) % live.len()];
        match n % 5 {
            2 | 3 if !live.is_empty() => {
                let (id, based_on) = pick(n);
                ContactOp::Edit {
                    id,
                    based_on,
                    name: format!("{} edit {n}", self.who.username),
                    favorite: n.is_multiple_of(2),
                }
            }
            4 if live.len() > 3 => {
                let (id, version) = pick(n);
                ContactOp::Delete { id, version }
            }
            _ => ContactOp::Create {
                name: format!("{} new {n}", self.who.username),
            },
        }
    }

    async fn run(&mut self, c: &Client) {
        let token = self.who.access.clone();
        loop {
            let op = self.next();
            let r = match &op {
                ContactOp::Create { name } => {
                    let body = json!({"display_name": name, "phones": [{"value": "+1 555 0100"}]});
                    c.req("POST", "/api/v1/contacts", &token, Some(body)).await
                }
                ContactOp::Edit {
                    id,
                    based_on,
                    name,
                    favorite,
                } => {
                    let body =
                        json!({"display_name": name, "favorite": favorite, "version": based_on});
                    c.req("PUT", &format!("/api/v1/contacts/{id}"), &token, Some(body))
                        .await
                }
                ContactOp::Delete { id, version } => {
                    let path = format!("/api/v1/contacts/{id}?version={version}");
                    c.req("DELETE", &path, &token, None).await
                }
            };
            let Ok((status, body)) = r else {
                self.pending = Some(op);
                return;
            };
            match op {
                ContactOp::Create { name } => {
                    assert_eq!(status, 201, "{body}");
                    let e = Entry::Live {
                        version: 1,
                        name,
                        favorite: false,
                    };
                    self.entries.insert(body["id"].as_i64().unwrap(), e);
                }
                ContactOp::Edit {
                    id,
                    based_on,
                    name,
                    favorite,
                } => {
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(body["version"], based_on + 1, "{body}");
                    let e = Entry::Live {
                        version: based_on + 1,
                        name,
                        favorite,
                    };
                    self.entries.insert(id, e);
                }
                ContactOp::Delete { id, .. } => {
                    assert_eq!(status, 200, "{body}");
                    self.entries.insert(id, Entry::Deleted);
                }
            }
            let revision = body["revision"].as_i64().unwrap();
            assert!(revision > self.revision, "{body}");
            self.revision = revision;
            self.acked += 1;
        }
    }

    /// After a restart: the address book is what was acknowledged, plus
    /// the write in flight if (and only if) the revision says it happened.
    async fn check(&mut self, c: &Client, unacked: &mut Unacked) {
        let token = self.who.access.clone();
        let list = c.get("/api/v1/contacts", &token).await;
        let revision = list["revision"].as_i64().unwrap();
        let server: BTreeMap<i64, Entry> = list["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let entry = Entry::Live {
                    version: e["version"].as_i64().unwrap(),
                    name: e["display_name"].as_str().unwrap().to_owned(),
                    favorite: e["favorite"].as_bool().unwrap(),
                };
                (e["id"].as_i64().unwrap(), entry)
            })
            .collect();
        let pending = self.pending.take();
        let applied = revision == self.revision + 1;
        assert!(
            revision == self.revision || (applied && pending.is_some()),
            "{}: revision {revision}, acknowledged {}, in flight {pending:?}",
            self.who.username,
            self.revision
        );
        let mut expect: BTreeMap<i64, Entry> = self
            .entries
            .iter()
            .filter(|(_, e)| **e != Entry::Deleted)
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        if pending.is_some() {
            unacked.count(applied);
        }
        if applied {
            match pending.clone().unwrap() {
                ContactOp::Create { name } => {
                    let new: Vec<i64> = server
                        .keys()
                        .filter(|id| !self.entries.contains_key(id))
                        .copied()
                        .collect();
                    assert_eq!(new.len(), 1, "{}: {server:?}", self.who.username);
                    let e = Entry::Live {
                        version: 1,
                        name,
                        favorite: false,
                    };
                    expect.insert(new[0], e);
                }
                ContactOp::Edit {
                    id,
                    based_on,
                    name,
                    favorite,
                } => {
                    let e = Entry::Live {
                        version: based_on + 1,
                        name,
                        favorite,
                    };
                    expect.insert(id, e);
                }
                ContactOp::Delete { id, .. } => {
                    expect.remove(&id);
                    self.entries.insert(id, Entry::Deleted);
                }
            }
        }
        assert_eq!(
            server, expect,
            "{}: the address book after the restart (in flight: {pending:?}, applied: {applied})",
            self.who.username
        );
        // Deleted entries stay deleted (their tombstones answer 404 alone).
        for (id, e) in &self.entries {
            if *e == Entry::Deleted {
                let path = format!("/api/v1/contacts/{id}");
                let (s, v) = c.req("GET", &path, &token, None).await.unwrap();
                assert_eq!(s, 404, "deleted contact {id} is back: {v}");
            }
        }
        for (id, e) in server {
            self.entries.insert(id, e);
        }
        self.revision = revision;
    }
}

/// One account's status text, set over and over.
struct Status {
    who: Login,
    acked: Option<String>,
    pending: Option<String>,
    n: u64,
    count: u64,
}

impl Status {
    async fn run(&mut self, c: &Client) {
        loop {
            self.n += 1;
            let text = format!("status {}", self.n);
            let body = json!({"text": text});
            match c
                .req("PUT", "/api/v1/presence", &self.who.access, Some(body))
                .await
            {
                Ok((s, v)) => {
                    assert_eq!(s, 200, "{v}");
                    assert_eq!(v["text"], text.as_str(), "{v}");
                    self.acked = Some(text);
                    self.count += 1;
                }
                Err(_) => {
                    self.pending = Some(text);
                    return;
                }
            }
        }
    }

    async fn check(&mut self, c: &Client, unacked: &mut Unacked) {
        let path = format!("/api/v1/presence/{}", self.who.account);
        let text = c.get(&path, &self.who.access).await["text"]
            .as_str()
            .map(str::to_owned);
        let pending = self.pending.take();
        let applied = pending.is_some() && text == pending;
        assert!(
            text == self.acked || applied,
            "{}: text {text:?}, acknowledged {:?}, in flight {pending:?}",
            self.who.username,
            self.acked
        );
        if pending.is_some() {
            unacked.count(applied);
        }
        self.acked = text;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    None,
    Requested(i64),
    Linked,
}

/// Two accounts: a asks b, b accepts, a ends the link; again and again.
struct Links {
    a: Login,
    b: Login,
    state: Link,
    pending: bool,
    count: u64,
}

impl Links {
    async fn run(&mut self, c: &Client) {
        loop {
            let r = match self.state {
                Link::None => {
                    let body = json!({"username": self.b.username});
                    c.req(
                        "POST",
                        "/api/v1/contact-requests",
                        &self.a.access,
                        Some(body),
                    )
                    .await
                }
                Link::Requested(id) => {
                    let path = format!("/api/v1/contact-requests/{id}/accept");
                    c.req("POST", &path, &self.b.access, Some(json!({}))).await
                }
                Link::Linked => {
                    let path = format!("/api/v1/mutual-contacts/{}", self.b.account);
                    c.req("DELETE", &path, &self.a.access, None).await
                }
            };
            let Ok((s, v)) = r else {
                self.pending = true;
                return;
            };
            self.state = match self.state {
                Link::None => {
                    assert_eq!(s, 201, "{v}");
                    Link::Requested(v["request"]["id"].as_i64().unwrap())
                }
                Link::Requested(_) => {
                    assert_eq!(s, 200, "{v}");
                    Link::Linked
                }
                Link::Linked => {
                    assert_eq!(s, 204, "{v}");
                    Link::None
                }
            };
            self.count += 1;
        }
    }

    fn after(state: Link) -> fn(Link) -> bool {
        match state {
            Link::None => |l| matches!(l, Link::Requested(_)),
            Link::Requested(_) => |l| l == Link::Linked,
            Link::Linked => |l| l == Link::None,
        }
    }

    async fn check(&mut self, c: &Client, unacked: &mut Unacked) {
        let mutual = c.get("/api/v1/mutual-contacts", &self.a.access).await;
        let linked = mutual["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == self.b.account);
        let requests = c.get("/api/v1/contact-requests", &self.a.access).await;
        let asked = requests["outgoing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["to"]["id"] == self.b.account)
            .map(|r| r["id"].as_i64().unwrap());
        let server = match (linked, asked) {
            (true, None) => Link::Linked,
            (false, Some(id)) => Link::Requested(id),
            (false, None) => Link::None,
            (true, Some(_)) => panic!("linked and asked at once: {mutual} {requests}"),
        };
        let applied = self.pending && Self::after(self.state)(server);
        assert!(
            server == self.state || applied,
            "{} and {}: {server:?}, acknowledged {:?}, in flight: {}",
            self.a.username,
            self.b.username,
            self.state,
            self.pending
        );
        if self.pending {
            unacked.count(applied);
        }
        self.pending = false;
        self.state = server;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CallStep {
    Ringing,
    Answered,
    Ended,
    /// Over, as an earlier restart's check found it (the call a crash
    /// interrupted, or one an invite in flight left).
    Settled(&'static str),
}

/// The outcomes a call of these writers can have.
fn outcome(s: &str) -> &'static str {
    match s {
        "answered" => "answered",
        "cancelled" => "cancelled",
        other => panic!("unexpected outcome {other}"),
    }
}

/// A caller and a callee, both with device sockets open: invite, accept,
/// hang up; again and again.
struct Calls {
    caller: Login,
    callee: Login,
    calls: BTreeMap<i64, CallStep>,
    current: Option<i64>,
    pending: bool,
    count: u64,
}

impl Calls {
    async fn run(&mut self, c: &Client) {
        loop {
            let step = self.current.map(|id| (id, self.calls[&id]));
            let r = match step {
                None => {
                    let body = json!({"to": [self.callee.account], "video": true});
                    c.req("POST", "/api/v1/calls", &self.caller.access, Some(body))
                        .await
                }
                Some((id, CallStep::Ringing)) => {
                    let path = format!("/api/v1/calls/{id}/accept");
                    c.req("POST", &path, &self.callee.access, Some(json!({})))
                        .await
                }
                Some((id, _)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let path = format!("/api/v1/calls/{id}/leave");
                    c.req("POST", &path, &self.caller.access, Some(json!({})))
                        .await
                }
            };
            let Ok((s, v)) = r else {
                self.pending = true;
                return;
            };
            match step {
                None => {
                    assert_eq!(s, 201, "{v}");
                    let id = v["call"]["id"].as_i64().unwrap();
                    self.calls.insert(id, CallStep::Ringing);
                    self.current = Some(id);
                }
                Some((id, CallStep::Ringing)) => {
                    assert_eq!(s, 200, "{v}");
                    self.calls.insert(id, CallStep::Answered);
                }
                Some((id, _)) => {
                    assert_eq!(s, 200, "{v}");
                    self.calls.insert(id, CallStep::Ended);
                    self.current = None;
                }
            }
            self.count += 1;
        }
    }

    /// Every acknowledged call is in both histories, once, with the outcome
    /// its last acknowledged step implies; nothing is still going on.
    async fn check(&mut self, c: &Client, unacked: &mut Unacked) {
        let pending_step = self.current.map(|id| self.calls[&id]);
        let mut unknown_seen = false;
        for who in [&self.caller, &self.callee] {
            let h = c.get("/api/v1/calls/history?limit=200", &who.access).await;
            let mut seen: BTreeMap<i64, String> = BTreeMap::new();
            for r in h["calls"].as_array().unwrap() {
                let id = r["call_id"].as_i64().unwrap();
                let outcome = r["outcome"].as_str().unwrap().to_owned();
                assert!(
                    seen.insert(id, outcome).is_none(),
                    "{}: call {id} twice in the history",
                    who.username
                );
            }
            for (id, step) in &self.calls {
                let outcome = seen
                    .remove(id)
                    .unwrap_or_else(|| panic!("{}: call {id} ({step:?}) lost", who.username));
                let ok = match step {
                    CallStep::Answered | CallStep::Ended => outcome == "answered",
                    CallStep::Settled(o) => outcome == *o,
                    // Interrupted while ringing: cancelled; unless the accept
                    // in flight went through.
                    CallStep::Ringing => {
                        outcome == "cancelled" || (self.pending && outcome == "answered")
                    }
                };
                assert!(ok, "{}: call {id} ({step:?}) ended {outcome}", who.username);
            }
            // Only an invite in flight may have left a call we never heard of.
            let in_flight_invite = self.pending && self.current.is_none();
            assert!(
                seen.is_empty() || (in_flight_invite && seen.len() == 1),
                "{}: calls nobody placed: {seen:?}",
                who.username
            );
            unknown_seen |= !seen.is_empty();
            let active = c.get("/api/v1/calls/active", &who.access).await;
            assert_eq!(
                active["calls"],
                json!([]),
                "{}: still in a call",
                who.username
            );
        }
        if self.pending {
            // A step in flight shows when it changed the outcome (an invite
            // left a call, an accept made it answered); a hang-up in flight
            // leaves `answered` either way and counts as not shown.
            let applied = match pending_step {
                None => unknown_seen,
                Some(CallStep::Ringing) => {
                    let h = c
                        .get("/api/v1/calls/history?limit=200", &self.caller.access)
                        .await;
                    let id = self.current.unwrap();
                    h["calls"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["call_id"] == id && r["outcome"] == "answered")
                }
                Some(_) => false,
            };
            unacked.count(applied);
        }
        // Known or not, every call is over now, as the history says.
        let h = c
            .get("/api/v1/calls/history?limit=200", &self.caller.access)
            .await;
        let all = h["calls"].as_array().unwrap();
        assert!(all.len() < 200, "the history fits one page");
        for r in all {
            let step = CallStep::Settled(outcome(r["outcome"].as_str().unwrap()));
            self.calls.insert(r["call_id"].as_i64().unwrap(), step);
        }
        self.current = None;
        self.pending = false;
    }
}

enum Writer {
    Contacts(Contacts),
    Status(Status),
    Links(Links),
    Calls(Calls),
}

impl Writer {
    async fn run(&mut self, c: Client) {
        match self {
            Writer::Contacts(w) => w.run(&c).await,
            Writer::Status(w) => w.run(&c).await,
            Writer::Links(w) => w.run(&c).await,
            Writer::Calls(w) => w.run(&c).await,
        }
    }

    async fn check(&mut self, c: &Client, unacked: &mut Unacked) {
        match self {
            Writer::Contacts(w) => w.check(c, unacked).await,
            Writer::Status(w) => w.check(c, unacked).await,
            Writer::Links(w) => w.check(c, unacked).await,
            Writer::Calls(w) => w.check(c, unacked).await,
        }
    }

    fn acked(&self) -> u64 {
        match self {
            Writer::Contacts(w) => w.acked,
            Writer::Status(w) => w.count,
            Writer::Links(w) => w.count,
            Writer::Calls(w) => w.count,
        }
    }
}

/// A device socket: authenticated, `ready` received; then read until it
/// closes (so pushes never back up). Returns `ready`.
async fn device_socket(addr: &str, token: &str) -> (Value, tokio::task::JoinHandle<()>) {
    use futures_util::StreamExt;
    let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws"))
        .await
        .unwrap();
    let mut ws = common::Ws { inner };
    ws.send(json!({"type": "auth", "token": token})).await;
    let ready = ws.expect("ready").await;
    let task = tokio::spawn(async move { while let Some(Ok(_)) = ws.inner.next().await {} });
    (ready, task)
}

/// The store file passes SQLite's own checks (read-only, beside the server).
/// On PostgreSQL (api_postgres) there is no file to check: the server
/// guards its own pages, and the test's other checks are the same.
async fn integrity(path: &str) {
    use sqlx::Connection;
    if common::postgres() {
        return;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut db = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let check: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(check, ["ok"], "integrity_check");
    let fk: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(fk.is_empty(), "foreign_key_check: {fk:?}");
    let _ = db.close().await;
}

/// Joins `room` with an access token over the room socket and waits for
/// the media to connect.
async fn join_with_media(addr: &str, token: &str, room: &str) {
    let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let mut ws = common::Ws { inner };
    ws.send(json!({"type": "join", "token": token, "room": room}))
        .await;
    ws.expect("joined").await;
    let (offer, pending) = common::Peer::session(true).await;
    ws.send(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await;
    let answer = ws.expect("answer").await;
    let answer =
        str0m::change::SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap();
    let (_offers_tx, offers) = tokio::sync::mpsc::unbounded_channel();
    let (answers, _answers_rx) = tokio::sync::mpsc::unbounded_channel();
    let peer = pending.start(answer, (offers, answers));
    assert!(
        peer.wait(Duration::from_secs(10), common::Peer::connected)
            .await,
        "media connects in {room}"
    );
    ws.send(json!({"type": "leave"})).await;
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_writes_loses_no_acknowledged_write() {
    let file = StoreFile::new("kill-writes");
    tokio::time::timeout(Duration::from_secs(150), async {
        let (mut child, mut addr) = common::start_binary(&file.location).await;
        let api = Api::at(format!("http://{addr}"));
        let mut people = Vec::new();
        for i in 0..12 {
            people.push(api.user(&format!("writer{i}"), "phone").await);
        }
        let p = |i: usize| people[i].clone();
        let mut writers = Vec::new();
        for i in 0..4 {
            writers.push(Writer::Contacts(Contacts {
                who: p(i),
                entries: BTreeMap::new(),
                revision: 0,
                pending: None,
                n: 0,
                acked: 0,
            }));
            writers.push(Writer::Status(Status {
                who: p(i),
                acked: None,
                pending: None,
                n: 0,
                count: 0,
            }));
        }
        for i in [4, 6] {
            writers.push(Writer::Links(Links {
                a: p(i),
                b: p(i + 1),
                state: Link::None,
                pending: false,
                count: 0,
            }));
        }
        for i in [8, 10] {
            writers.push(Writer::Calls(Calls {
                caller: p(i),
                callee: p(i + 1),
                calls: BTreeMap::new(),
                current: None,
                pending: false,
                count: 0,
            }));
        }
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut unacked = Unacked::default();
        // Kills at different moments of the writing.
        for (life, after_ms) in [700u64, 1900, 3300].into_iter().enumerate() {
            // Device sockets of everyone but the link writers, open during the writes.
            let mut sockets = Vec::new();
            for i in (0..4).chain(8..12) {
                sockets.push(device_socket(&addr, &people[i].access).await.1);
            }
            let kill = async {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                // At a moment when several writes are in flight.
                let end = tokio::time::Instant::now() + Duration::from_secs(5);
                while in_flight.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < end {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let n = in_flight.load(Ordering::SeqCst);
                child.start_kill().unwrap();
                n
            };
            let runs = futures_util::future::join_all(
                writers
                    .iter_mut()
                    .map(|w| w.run(Client::new(&addr, &in_flight))),
            );
            let (in_flight_at_kill, _) = tokio::join!(kill, runs);
            child.wait().await.unwrap();
            for s in sockets {
                // Each socket ends with the process.
                tokio::time::timeout(Duration::from_secs(5), s)
                    .await
                    .unwrap()
                    .unwrap();
            }
            let acked: u64 = writers.iter().map(Writer::acked).sum();

            // The next life, same file.
            (child, addr) = common::start_binary(&file.location).await;
            integrity(&file.path).await;
            let c = Client::new(&addr, &in_flight);
            for w in &mut writers {
                w.check(&c, &mut unacked).await;
            }
            // Clients come back: sockets authenticate with the tokens they
            // had and get `ready` (with the address book's revision).
            for w in &writers {
                if let Writer::Contacts(w) = w {
                    let (ready, s) = device_socket(&addr, &w.who.access).await;
                    assert_eq!(ready["contacts_revision"], w.revision, "{ready}");
                    s.abort();
                }
            }
            eprintln!(
                "kill {}: after {after_ms} ms of writing, {in_flight_at_kill} requests in flight; \
                 {acked} writes acknowledged so far, none lost; unacknowledged so far: \
                 {} happened, {} did not",
                life + 1,
                unacked.applied,
                unacked.not_applied
            );
        }
        // Refresh tokens still work, and a room can be joined with media.
        let c = Client::new(&addr, &in_flight);
        for who in &people {
            let body = json!({"refresh_token": who.refresh});
            let (s, v) = c
                .req("POST", "/api/v1/auth/refresh", "", Some(body))
                .await
                .unwrap();
            assert_eq!(s, 200, "{}: {v}", who.username);
        }
        join_with_media(&addr, &people[0].access, "after-the-crash").await;
        let totals: Vec<String> = writers
            .iter()
            .map(|w| match w {
                Writer::Contacts(w) => format!("{} contacts {}", w.who.username, w.acked),
                Writer::Status(w) => format!("{} status {}", w.who.username, w.count),
                Writer::Links(w) => format!("{}-{} links {}", w.a.username, w.b.username, w.count),
                Writer::Calls(w) => format!(
                    "{}->{} call steps {}",
                    w.caller.username, w.callee.username, w.count
                ),
            })
            .collect();
        eprintln!("acknowledged writes: {}", totals.join(", "));
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    })
    .await
    .expect("test timed out");
}
