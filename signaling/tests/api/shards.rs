//! Media shards (`media.shards`): rooms on two shards, each with its own core
//! and UDP port, carry media side by side; every participant is found on its
//! room's shard; the server API, the metrics and a departure see all shards.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Api, SessionClient, start_with, with_config};
use vela_config::Config;
use vela_media::core::{RoomId, id_shard};
use vela_signaling::token::{TokenKeys, VideoGrant};

/// The ports the server's answer offers as host candidates of `proto`
/// (`udp`, or `tcp`: ICE over TCP).
fn candidate_ports(sdp: &str, proto: &str) -> Vec<u16> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter(|l| l.split_whitespace().nth(2) == Some(proto))
        .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_two_shards_carry_media_side_by_side() {
    let config = |c: &mut Config| c.media.shards = 2;
    with_config(Duration::from_secs(90), config, async |s, _| {
        assert_eq!(s.media.shards(), 2);
        // Rooms go to the least loaded shard: the second room to the shard
        // without one (a hash of the names would pair them half the time).
        let rooms = ["north".to_owned(), "south".to_owned()];
        let mut clients = Vec::new();
        for (k, room) in rooms.iter().enumerate() {
            for who in ["alice", "bob"] {
                let c = SessionClient::join(s, room, who, true).await;
                // Its id was numbered by its room's shard.
                let id: u64 = c.id.trim_start_matches("PA").parse().unwrap();
                assert_eq!(id_shard(id, 2), k, "{} in {room}", c.id);
                clients.push(c);
            }
            assert_eq!(s.media.shard_of_room(&RoomId::new(room).unwrap()), Some(k));
        }
        // Each shard answers from a port of its own.
        let ports: Vec<Vec<u16>> = clients
            .iter()
            .map(|c| candidate_ports(&c.answer_sdp, "udp"))
            .collect();
        assert!(!ports[0].is_empty(), "{ports:?}");
        assert_eq!(ports[0], ports[1]);
        assert_eq!(ports[2], ports[3]);
        assert!(ports[0].iter().all(|p| !ports[2].contains(p)), "{ports:?}");
        // ICE over TCP: one port for the node, whatever the shard.
        let tcp: Vec<Vec<u16>> = clients
            .iter()
            .map(|c| candidate_ports(&c.answer_sdp, "tcp"))
            .collect();
        assert!(!tcp[0].is_empty(), "{tcp:?}");
        assert!(tcp.iter().all(|t| *t == tcp[0]), "{tcp:?}");
        assert_eq!(Some(tcp[0][0]), s.tcp_addr.map(|a| a.port()));

        // Both rooms carry both kinds of media between their two members.
        let mut flowing = false;
        for _ in 0..60 {
            let d = Duration::from_millis(100);
            let [a, b, c, e] = &mut clients[..] else {
                unreachable!()
            };
            tokio::join!(a.pump(d), b.pump(d), c.pump(d), e.pump(d));
            flowing = clients
                .iter()
                .all(|x| x.peer.audio_frames() > 25 && x.peer.video_frames() > 10);
            if flowing {
                break;
            }
        }
        assert!(
            flowing,
            "{:?}",
            clients
                .iter()
                .map(|x| (x.peer.audio_frames(), x.peer.video_frames()))
                .collect::<Vec<_>>()
        );

        // The server API lists the rooms of both shards, and finds each
        // room's participants on its shard.
        let keys = TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET);
        let token = |grant: VideoGrant| {
            keys.issue("svc", None, grant, Duration::from_secs(600))
                .unwrap()
        };
        let lister = token(VideoGrant {
            room_list: true,
            ..VideoGrant::default()
        });
        let api = Api::new(s);
        let listed = api.get("/api/v1/rooms", &lister).await.ok(200);
        let names: Vec<&str> = listed["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let mut expected = rooms.clone();
        expected.sort();
        assert_eq!(names, expected);
        for room in &rooms {
            let admin = token(VideoGrant {
                room: Some(room.clone()),
                room_admin: true,
                ..VideoGrant::default()
            });
            let who = api
                .get(&format!("/api/v1/rooms/{room}/participants"), &admin)
                .await
                .ok(200);
            assert_eq!(who["participants"].as_array().unwrap().len(), 2, "{who}");
        }

        // The metrics add the shards up.
        let metrics = common::scrape_metrics(s).await;
        assert!(metrics.contains("\nvela_rooms 2\n"), "{metrics}");
        assert!(metrics.contains("\nvela_participants 4\n"), "{metrics}");
        // ICE over TCP is counted for the node (these clients use UDP).
        assert!(
            metrics.contains("\nvela_ice_tcp_connections 0\n"),
            "{metrics}"
        );
        for reason in [
            "limit",
            "silent",
            "not_stun",
            "bad_frame",
            "no_peer",
            "stalled",
        ] {
            let series =
                format!("\nvela_ice_tcp_connections_closed_total{{reason=\"{reason}\"}} 0\n");
            assert!(metrics.contains(&series), "{series} in {metrics}");
        }

        // A participant of the second shard leaves; the first shard's room
        // goes on.
        let mut gone = clients.pop().unwrap();
        gone.ws.send(serde_json::json!({"type": "leave"})).await;
        let stats_say_three = async {
            for _ in 0..50 {
                if s.media.stats().await.unwrap().participants == 3 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        assert!(stats_say_three.await);
        let before = clients[0].peer.audio_frames();
        let [a, b, _] = &mut clients[..] else {
            unreachable!()
        };
        let d = Duration::from_millis(500);
        tokio::join!(a.pump(d), b.pump(d));
        assert!(clients[0].peer.audio_frames() > before + 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_is_reported_and_not_ready() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut s = start_with(|c| c.media.shards = 2).await;
        let room = RoomId::new("doomed").unwrap();
        // A bug in the core (a panic on its driver task) takes the shard down.
        let r = s
            .media
            .with_room(&room, |_, _| -> () { panic!("injected fault") })
            .await;
        assert!(r.is_err(), "the job's caller learns the shard stopped");
        let failed = tokio::time::timeout(Duration::from_secs(5), s.media_failure())
            .await
            .expect("the failure is reported at once");
        assert_eq!(failed.reason, "injected fault");
        assert!(failed.shard < 2, "{failed:?}");
        let ready = reqwest::get(format!("http://{}/readyz", s.http_addr))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        assert_eq!(ready.text().await.unwrap(), "media driver not answering");
        // The server still shuts down in bounded time, the other shard too.
        tokio::time::timeout(Duration::from_secs(30), s.shutdown())
            .await
            .expect("shutdown with a failed shard");
    })
    .await
    .expect("test timed out");
}
