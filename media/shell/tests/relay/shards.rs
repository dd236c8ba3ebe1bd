//! A room over two shards of one node.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vela_media::core::{RoomEvent, RoomId, SfuConfig};
use vela_media::{LinkPeer, MediaHandle, MediaSockets, MediaTask, NodeOptions};

use std::sync::atomic::Ordering;

use vela_media::core::TrackSettings;

use crate::client::{Client, Publish};

pub(crate) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `n` shards on loopback; a room takes `per_shard` participants on one
/// shard before it spreads.
async fn node(n: usize, per_shard: u32) -> (MediaHandle, MediaTask, mpsc::Receiver<RoomEvent>) {
    node_with(n, per_shard, |c| c).await
}

/// [`node`] with each shard's config changed by `f`.
async fn node_with(
    n: usize,
    per_shard: u32,
    f: impl Fn(SfuConfig) -> SfuConfig,
) -> (MediaHandle, MediaTask, mpsc::Receiver<RoomEvent>) {
    let mut shards = Vec::new();
    for k in 0..n {
        let sockets = MediaSockets::bind(&[LOOPBACK], 0, LOOPBACK)
            .await
            .expect("bind");
        let config = f(SfuConfig::new(sockets.advertised()).set_id_space(k as u64 + 1, n as u64));
        shards.push((sockets, config));
    }
    let (tx, rx) = mpsc::channel(1024);
    let options = NodeOptions::new()
        .set_id_base(7 << 40)
        .set_max_room_participants_per_shard(per_shard);
    let (media, task) = vela_media::spawn_node(shards, Some(tx), options);
    (media, task, rx)
}

/// Waits (bounded) until `cond` holds.
pub(crate) async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The room events received so far for `room`: (started, finished).
fn starts_and_ends(rx: &mut mpsc::Receiver<RoomEvent>, room: &RoomId, seen: &mut (u32, u32)) {
    while let Ok(e) = rx.try_recv() {
        match e {
            RoomEvent::RoomStarted { room: r } if &r == room => seen.0 += 1,
            RoomEvent::RoomFinished { room: r } if &r == room => seen.1 += 1,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_another_shard_receives_the_publisher_and_the_room_starts_once() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (media, _task, mut events) = node(2, 1).await;
        let room = RoomId::new("spread").unwrap();
        let publisher = Client::join(&media, "spread", "alice", true).await;
        let subscriber = Client::join(&media, "spread", "bob", false).await;
        assert_eq!(
            media.shards_of_room(&room),
            [0, 1],
            "bob went to the second shard"
        );
        // Ids carry the node's base.
        assert!(publisher.conn.0 > 7 << 40 && subscriber.conn.0 > 7 << 40);
        let got = until(Duration::from_secs(15), || {
            subscriber.audio() >= 20 && subscriber.video() >= 10
        })
        .await;
        assert!(
            got,
            "bob on shard 1 hears and sees alice on shard 0: audio {} video {}",
            subscriber.audio(),
            subscriber.video()
        );
        // Shard 0 relays alice's media; shard 1 forwards it to bob.
        let stats = media.shard_stats().await.unwrap();
        assert!(
            stats[1].packets_forwarded > 0,
            "shard 1 forwards: {stats:?}"
        );
        let links = media.local_link_stats().await.unwrap();
        assert!(links[0].sent > 0 && links[1].received > 0, "{links:?}");
        // The server API sees the whole room from its home shard.
        let everyone = media.room_participants(&room).await.unwrap();
        let mut names: Vec<_> = everyone.iter().map(|p| p.identity.as_str()).collect();
        names.sort();
        assert_eq!(names, ["alice", "bob"]);
        let rooms = media.rooms().await.unwrap();
        assert_eq!(
            rooms.iter().filter(|r| r.name == room).count(),
            1,
            "{rooms:?}"
        );

        let mut seen = (0, 0);
        drop(publisher);
        media
            .leave(subscriber.conn, vela_media::core::LeaveReason::ClientLeave)
            .await;
        // Alice's client went without a word: the server API removes her.
        media.remove_participant(&room, "alice").await.unwrap();
        until(Duration::from_secs(10), || {
            starts_and_ends(&mut events, &room, &mut seen);
            seen.1 >= 1
        })
        .await;
        // A little longer: a second RoomFinished would show by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        starts_and_ends(&mut events, &room, &mut seen);
        assert_eq!(
            seen,
            (1, 1),
            "one RoomStarted and one RoomFinished for the node"
        );
        media.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_four_over_two_shards_uses_both_drivers() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let (media, _task, _events) = node(2, 3).await;
        let room = RoomId::new("webinar").unwrap();
        let publisher = Client::join(&media, "webinar", "host", true).await;
        let mut subscribers = Vec::new();
        for k in 0..4 {
            subscribers.push(Client::join(&media, "webinar", &format!("viewer{k}"), false).await);
        }
        assert_eq!(media.shards_of_room(&room), [0, 1]);
        let got = until(Duration::from_secs(20), || {
            subscribers
                .iter()
                .all(|s| s.audio() >= 20 && s.video() >= 10)
        })
        .await;
        let counts: Vec<_> = subscribers.iter().map(|s| (s.audio(), s.video())).collect();
        assert!(got, "every viewer receives the host: {counts:?}");
        let stats = media.shard_stats().await.unwrap();
        for (k, s) in stats.iter().enumerate() {
            // Two viewers each, each having had 30 frames or more.
            assert!(s.packets_forwarded >= 60, "shard {k} forwards: {stats:?}");
        }
        // The host's packets cross to shard 1 once, not once per viewer.
        assert!(stats[0].relay_packets_sent > 0, "{stats:?}");
        assert!(
            stats[0].relay_packets_sent <= stats[0].packets_received,
            "{stats:?}"
        );
        assert!(stats[1].relay_packets_received > 0, "{stats:?}");
        // Each core's link to the other: the host's layers cross one way.
        let links = media.core_link_stats().await.unwrap();
        let of = |k: usize| links.iter().find(|l| l.shard == k).expect("a link");
        assert_eq!(of(0).peer, Some(LinkPeer::Shard(1)));
        assert_eq!(of(1).peer, Some(LinkPeer::Shard(0)));
        assert_eq!(
            (of(0).stats.layers_sent, of(1).stats.layers_received),
            (2, 2),
            "{links:?}"
        );
        assert_eq!(of(1).stats.layers_sent, 0, "{links:?}");
        drop(publisher);
        media.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_subscriber_on_another_shard_gets_the_low_layer_and_only_it_crosses() {
    tokio::time::timeout(Duration::from_secs(40), async {
        // Layers chosen by rendered size only (no bandwidth estimate).
        let (media, _task, _events) = node_with(2, 1, |c| c.set_bandwidth_estimation(false)).await;
        let room = RoomId::new("simulcast").unwrap();
        let small = TrackSettings {
            enabled: true,
            width: Some(320),
            height: Some(180),
        };
        let _alice =
            Client::join_with(&media, "simulcast", "alice", Publish::Simulcast, None).await;
        let bob =
            Client::join_with(&media, "simulcast", "bob", Publish::Nothing, Some(small)).await;
        assert_eq!(media.shards_of_room(&room), [0, 1]);
        let low = until(Duration::from_secs(20), || {
            bob.video() >= 20 && bob.counts.last_video_size.load(Ordering::Relaxed) == 300
        })
        .await;
        assert!(
            low,
            "bob gets the low layer: {} frames, last of {} bytes",
            bob.video(),
            bob.counts.last_video_size.load(Ordering::Relaxed)
        );
        // Audio and the low video layer cross to shard 1, nothing else.
        let links = media.core_link_stats().await.unwrap();
        let to_1 = links.iter().find(|l| l.shard == 0).expect("shard 0's link");
        assert_eq!(to_1.stats.layers_sent, 2, "{links:?}");
        media.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_stops_reading_resets_its_link_and_the_room_comes_back() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (media, _task, _events) = node(2, 1).await;
        // Enough room for every data message below in the clients' queues.
        let media = media.with_signal_queue(100_000);
        let room = RoomId::new("flood").unwrap();
        let alice = Client::join(&media, "flood", "alice", true).await;
        let bob = Client::join(&media, "flood", "bob", false).await;
        let carol = Client::join(&media, "flood", "carol", false).await;
        // Alice and carol on shard 0, bob on shard 1.
        assert_eq!(media.shards_of_room(&room), [0, 1]);
        assert!(until(Duration::from_secs(15), || bob.audio() >= 10).await);
        let joined = || bob.counts.joined_signals.load(Ordering::Relaxed);
        assert!(
            until(Duration::from_secs(5), || joined() == 2).await,
            "alice and carol"
        );

        // Shard 1's driver stops (a closure that sleeps on its core, for a
        // new room placed on the less loaded shard 1) while alice floods
        // the room with data messages, each crossing to shard 1 as control.
        let blocked = RoomId::new("block").unwrap();
        let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = {
            let (media, release) = (media.clone(), release.clone());
            tokio::spawn(async move {
                media
                    .with_room(&blocked, move |_, _| {
                        let end = Instant::now() + Duration::from_secs(20);
                        while !release.load(Ordering::Relaxed) && Instant::now() < end {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(media.shard_of_room(&RoomId::new("block").unwrap()), Some(1));
        let message = vela_media::core::DataMessage {
            topic: None,
            payload: vec![7u8; 8].into(),
            destinations: Vec::new(),
        };
        // More than the link's control queue holds.
        for _ in 0..20_000 {
            media
                .send_data_from(alice.conn, message.clone())
                .await
                .unwrap();
        }
        release.store(true, Ordering::Relaxed);
        stall.await.unwrap().unwrap();

        // Shard 0's link to shard 1 overflowed and was reset; the room is
        // linked again and bob hears alice again.
        let links = media.local_link_stats().await.unwrap();
        assert!(links[0].resets >= 1, "{links:?}");
        let before = bob.audio();
        assert!(
            until(Duration::from_secs(15), || bob.audio() >= before + 20).await,
            "bob hears alice again: {before} -> {}",
            bob.audio()
        );
        let names = |p: Vec<vela_media::core::ParticipantInfo>| {
            let mut v: Vec<String> = p.into_iter().map(|p| p.identity).collect();
            v.sort();
            v
        };
        // Bob saw them leave with the link and join again.
        assert!(
            until(Duration::from_secs(5), || joined() == 4).await,
            "{}",
            joined()
        );
        // Shard 1 (bob's) sees the whole room again.
        let seen = media
            .with_room(&RoomId::new("block").unwrap(), move |sfu, _| {
                sfu.participants(&RoomId::new("flood").unwrap())
            })
            .await
            .unwrap();
        assert_eq!(names(seen), ["alice", "bob", "carol"]);
        drop((alice, carol));
        media.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_participant_limit_holds_on_every_shard_it_spreads_to() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (media, _task, _events) = node(2, 1).await;
        let room = RoomId::new("limited").unwrap();
        let options = vela_media::core::RoomOptions {
            max_participants: 3,
            ..Default::default()
        };
        media.create_room(&room, options).await.unwrap();
        let _alice = Client::join(&media, "limited", "alice", true).await;
        let bob = Client::join(&media, "limited", "bob", false).await;
        let _carol = Client::join(&media, "limited", "carol", false).await;
        // Alice and carol on shard 0, bob on shard 1, which knows all three
        // once it was told of alice and carol.
        assert_eq!(media.shards_of_room(&room), [0, 1]);
        let told = || bob.counts.joined_signals.load(Ordering::Relaxed) >= 2;
        assert!(until(Duration::from_secs(10), told).await);
        // The fourth goes to shard 1 (the emptier part): full there too.
        let req = vela_media::core::JoinRequest::new(
            room.clone(),
            "dave",
            vela_media::core::PeerKind::Session,
        );
        let refused = media.join(req).await;
        assert!(
            matches!(
                refused,
                Err(vela_media::MediaError::Join(
                    vela_media::core::JoinError::RoomFull(_)
                ))
            ),
            "{:?}",
            refused.map(|(j, _)| j.participant.identity)
        );
        media.shutdown().await;
    })
    .await
    .expect("in time");
}
