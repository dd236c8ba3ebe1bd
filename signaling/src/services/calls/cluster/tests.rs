#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::net::{IpAddr, Ipv4Addr};

use vela_config::ClusterConfig;
use vela_media::MediaSockets;
use vela_media::core::SfuConfig;

use super::*;
use crate::domain::call::state::{CallState, Invitee, Person};
use crate::domain::ids::{AccountId, CallId, DeviceId};
use crate::services::calls::{CallsHandle, Refusal};
use crate::services::cluster::NodeIdentity;
use crate::services::hub::{DeviceBus, Hub};
use crate::services::store::Store;

fn person(id: i64) -> Person {
    Person {
        account_id: AccountId(id),
        username: format!("u{id}"),
        display_name: String::new(),
    }
}

fn invitee(id: i64) -> Invitee {
    Invitee {
        person: person(id),
        filtered: false,
    }
}

#[test]
fn operations_and_answers_read_back_as_written() {
    let ops = [
        Op::Invite {
            caller: person(1),
            device: DeviceId(7),
            invitees: vec![invitee(2)],
            video: true,
        },
        Op::Accept {
            id: CallId(3),
            account: AccountId(2),
            device: DeviceId(9),
            client: Some("tab-1".into()),
        },
        Op::AuthorizeJoin {
            room: "call-3".into(),
            account: AccountId(2),
            device: DeviceId(9),
            take_over: Some(ConnectionId(5)),
        },
        Op::RoomLeft {
            room: "call-3".into(),
            account: AccountId(2),
            connection: ConnectionId(5),
        },
    ];
    for op in ops {
        let request = Request {
            from: "n1#00".into(),
            id: 4,
            deadline: 99,
            op,
        };
        let json = serde_json::to_string(&request).unwrap();
        let back: Request = serde_json::from_slice(json.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
    // A refusal keeps its kind and text; a missing answer stays missing.
    for answer in [
        Some(Answer::Call(Err(Refusal::Conflict(
            "the call has ended".into(),
        )))),
        Some(Answer::Join(Ok(Some(ConnectionId(5))))),
        Some(Answer::Found(None)),
        Some(Answer::Done),
        None,
    ] {
        let json = serde_json::to_string(&Response { id: 4, answer }).unwrap();
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
    let json = serde_json::to_string(&Answer::Call(Err(Refusal::NotFound))).unwrap();
    assert!(matches!(
        serde_json::from_str::<Answer>(&json).unwrap(),
        Answer::Call(Err(Refusal::NotFound))
    ));
    assert_eq!(
        Refusal::from(crate::domain::call::state::CallError::Forbidden("no")),
        Refusal::Forbidden("no".into())
    );
}

#[test]
fn a_session_is_known_by_its_room_and_connection() {
    let s = Sessions::default();
    let joined = |room: &str, c: u64| Op::RoomJoined {
        room: room.into(),
        account: AccountId(1),
        device: DeviceId(1),
        connection: ConnectionId(c),
        public: vela_media::core::ParticipantId(c),
    };
    s.insert(&joined("call-1", 5));
    s.insert(&joined("call-2", 5));
    assert!(s.contains("call-1", ConnectionId(5)));
    s.remove("call-1", ConnectionId(5));
    assert!(!s.contains("call-1", ConnectionId(5)));
    assert!(s.contains("call-2", ConnectionId(5)));
    assert_eq!(s.all().len(), 1);
    assert!(token("n1") != token("n1"), "a token is new each start");
}

/// One node of a test cluster: its calls handle and its shutdown switch.
struct TestNode {
    calls: CallsHandle,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn node(id: &str, redis_url: &str, store: &Store) -> TestNode {
    let config = ClusterConfig {
        redis_url: redis_url.into(),
        node_id: id.into(),
        heartbeat_ms: 50,
        node_timeout_ms: 500,
        ..ClusterConfig::default()
    };
    let identity = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().unwrap());
    let cluster = Cluster::connect(&config, identity).await.unwrap();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let sockets = MediaSockets::bind(&[localhost], 0, localhost)
        .await
        .unwrap();
    let sfu = SfuConfig::new(sockets.advertised());
    let (media, _driver) = vela_media::spawn(sockets, sfu);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (_events_tx, events_rx) = mpsc::channel(8);
    let (webhooks, _) = crate::services::webhook::spawn(
        &vela_config::WebhooksConfig::default(),
        "key",
        "secret",
        Arc::default(),
        events_rx,
        crate::services::webhook::ClusterView {
            cluster: Some(cluster.clone()),
            rooms: None,
        },
        shutdown_rx.clone(),
    );
    let (calls, task) = CallsHandle::spawn(
        &vela_config::CallsConfig::default(),
        store.clone(),
        Hub::new(DeviceBus::Local),
        media,
        webhooks,
        Some(cluster),
        shutdown_rx,
    )
    .await
    .unwrap();
    TestNode {
        calls,
        shutdown,
        task,
    }
}

#[tokio::test]
async fn operations_from_any_node_run_on_one_owner_and_a_handover_keeps_the_calls() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let redis = vela_testkit::Redis::start();
        let dir = std::env::temp_dir().join(format!("vela-calls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster-calls.sqlite");
        let _ = std::fs::remove_file(&path);
        // Both nodes' stores are one file, as a cluster's one database.
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        for (name, id) in [("u1", 1), ("u2", 2), ("u3", 3)] {
            let a = store
                .create_account(name, name, "hash", &[crate::domain::account::Role::User], 1)
                .await
                .unwrap();
            assert_eq!(a.id, AccountId(id));
        }
        let n1 = node("n1", &redis.url(), &store).await;
        let n2 = node("n2", &redis.url(), &store).await;
        // Placed on either node (the first waits for an owner).
        let call = n2
            .calls
            .invite(person(1), DeviceId(1), vec![invitee(2), invitee(3)], false)
            .await
            .unwrap();
        assert_eq!(call.state, CallState::Ringing);
        // Accepts raced from both nodes: one state machine, so exactly one wins
        // per account, and the second of an account is refused.
        let (a, b) = tokio::join!(
            n1.calls.accept(call.id, AccountId(2), DeviceId(21), None),
            n2.calls.accept(call.id, AccountId(2), DeviceId(22), None),
        );
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(
            matches!(loser, Err(CallsError::Call(Refusal::Conflict(_)))),
            "{loser:?}"
        );
        // A refusal travels with its kind.
        assert_eq!(
            n1.calls.call(CallId(999), AccountId(1)).await.unwrap_err(),
            CallsError::Call(Refusal::NotFound)
        );
        // The owner shuts down: it hands the calls over, the other restores them.
        let (first, second) = {
            let mut r = redis::Client::open(redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let owner: String = redis::cmd("GET")
                .arg(owner_key())
                .query_async(&mut r)
                .await
                .unwrap();
            if owner.starts_with("n1#") {
                (n1, n2)
            } else {
                (n2, n1)
            }
        };
        let _ = first.shutdown.send(true);
        first.task.await.unwrap();
        let (seen, _) = second.calls.call(call.id, AccountId(3)).await.unwrap();
        assert_eq!(seen.state, CallState::Active);
        second
            .calls
            .accept(call.id, AccountId(3), DeviceId(31), None)
            .await
            .unwrap();
        second.calls.leave(call.id, AccountId(1)).await.unwrap();
        second.calls.leave(call.id, AccountId(2)).await.unwrap();
        // Ended once: one history entry per member.
        for a in 1..=3 {
            let h = store.call_history(AccountId(a), None, 10).await.unwrap();
            assert_eq!(h.len(), 1, "account {a}: {h:?}");
        }
        // With no node left, an operation is refused in bounded time with 503.
        let _ = second.shutdown.send(true);
        second.task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        let e = second.calls.active(AccountId(1)).await.unwrap_err();
        assert!(matches!(e, CallsError::Unavailable { .. }), "{e:?}");
        assert!(started.elapsed() <= REQUEST_TIMEOUT + Duration::from_secs(1));
    })
    .await
    .expect("within the limit");
}
