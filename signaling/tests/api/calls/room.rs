//! The call room: only the call's members get in, on the device they are
//! in the call on; another device of theirs takes the call over (same
//! participant, media switched, the old connection dropped), and the gap
//! the other side sees is measured, on one media shard and on two.

#![allow(clippy::unwrap_used)]

use crate::calls;
use crate::common;

use std::time::{Duration, Instant};

use calls::*;
use common::{Api, dev_token, start_with};
use vela_media::core::{RoomId, RoomOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_moves_to_another_device_without_the_other_side_losing_it() {
    tokio::time::timeout(LIMIT, handover(1))
        .await
        .expect("time limit");
}

/// The same on a server with two media shards, in a call whose room lives on
/// the second: the takeover is routed by participant id to the room's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_moves_to_another_device_on_a_sharded_server() {
    tokio::time::timeout(LIMIT, handover(2))
        .await
        .expect("time limit");
}

/// Ann calls Ben, Ben answers on his phone and takes the call over on his
/// desk; on `shards` media shards (1 or 2), the call's room on the last one.
async fn handover(shards: u16) {
    let s = start_with(|c| {
        c.calls.ring_timeout_ms = 10_000;
        c.media.shards = shards;
    })
    .await;
    let api = Api::new(&s);
    let ann = api.user("ann", "phone").await;
    let ben = api.user("ben", "phone").await;
    let ben_desk = another_device(&api, &ben, "desk").await;
    let cat = api.user("cat", "phone").await;
    let mut bd = socket(&s, &ben_desk).await;
    // With two shards, an empty room opened first takes the first: the
    // call's room, new after it, goes to the second.
    if shards > 1 {
        let lobby = RoomId::new("lobby").unwrap();
        s.media
            .create_room(&lobby, RoomOptions::default())
            .await
            .unwrap();
    }
    let v = invite(&api, &ann, &[ben.account], true).await.ok(201);
    let id = v["call"]["id"].as_i64().unwrap();
    let room = v["room"].as_str().unwrap().to_owned();
    // Room tokens and strangers stay out; so does a device not in the call.
    let token = dev_token(&s, &room, "intruder").await;
    let e = join_room(&s, &token, &room, None, false)
        .await
        .err()
        .unwrap();
    assert_eq!(e["code"], 403, "{e}");
    let e = join_room(&s, &cat.access, &room, None, false)
        .await
        .err()
        .unwrap();
    assert_eq!(e["code"], 403, "{e}");
    let e = join_room(&s, &ben.access, &room, None, false)
        .await
        .err()
        .unwrap();
    assert_eq!(e["code"], 403, "not answered yet: {e}");

    let mut ann_s = join_room(&s, &ann.access, &room, None, false)
        .await
        .unwrap();
    act(&api, &ben, id, "accept").await.ok(200);
    let e = join_room(&s, &ben_desk.access, &room, None, true)
        .await
        .err()
        .unwrap();
    assert_eq!(e["code"], 403, "the call is on the phone: {e}");
    let mut phone = join_room(&s, &ben.access, &room, None, true).await.unwrap();
    assert_eq!(
        s.media.shard_of_room(&RoomId::new(&room).unwrap()),
        Some(usize::from(shards) - 1)
    );
    let started = Instant::now();
    while ann_s.peer.video_frames() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no media to ann"
        );
        tokio::join!(
            ann_s.pump(Duration::from_millis(100)),
            phone.pump(Duration::from_millis(100))
        );
    }
    // Every device of Ben's knows the participant to take over.
    let upd = bd
        .wait_for("ben's participant id", |m| {
            m["type"] == "call_updated"
                && m["call"]["members"][1]["participant_id"].as_str() == Some(phone.id.as_str())
        })
        .await;
    let pid = upd["call"]["members"][1]["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Only one's own participant can be taken over.
    let ann_pid = ann_s.id.clone();
    let e = join_room(&s, &ben_desk.access, &room, Some(&ann_pid), true)
        .await
        .err()
        .unwrap();
    assert_eq!(e["code"], 403, "{e}");

    let mut desk = join_room(&s, &ben_desk.access, &room, Some(&pid), true)
        .await
        .unwrap();
    assert_eq!(desk.joined["participant"]["id"], pid.as_str());
    // Watch what Ann receives, every 100 ms, until the phone drops out.
    let mut last = (Instant::now(), ann_s.peer.video_frames());
    let mut longest = Duration::ZERO;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        tokio::join!(
            ann_s.pump(Duration::from_millis(100)),
            phone.pump(Duration::from_millis(100)),
            desk.pump(Duration::from_millis(100)),
        );
        let frames = ann_s.peer.video_frames();
        if frames > last.1 {
            longest = longest.max(last.0.elapsed());
            last = (Instant::now(), frames);
        }
        if phone.saw_type("left") && watch.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    longest = longest.max(last.0.elapsed());
    eprintln!("longest gap in ann's video during the handover: {longest:?}");
    let left = phone.seen.iter().find(|m| m["type"] == "left").cloned();
    assert_eq!(
        left.map(|l| l["reason"].clone()),
        Some("handed_over".into())
    );
    assert!(
        !ann_s.saw_type("participant_left"),
        "ann saw ben leave: {:?}",
        ann_s.seen
    );
    assert!(longest < Duration::from_secs(1), "gap {longest:?}");
    let v = get_call(&api, &ann, id).await;
    let m = &v["call"]["members"][1];
    assert_eq!(m["device_id"], ben_desk.device);
    assert_eq!(m["participant_id"], pid.as_str());
    assert_eq!(v["call"]["state"], "active");

    // Hanging up on the new device ends the call; the history notes the move.
    desk.ws.send(serde_json::json!({"type": "leave"})).await;
    let rb = record(&api, &ben, id).await;
    assert_eq!(rb["outcome"], "answered");
    assert_eq!(rb["device_id"], ben.device);
    assert_eq!(rb["handed_over_to"], serde_json::json!([ben_desk.device]));
    assert_eq!(record(&api, &ann, id).await["outcome"], "answered");
    ann_s.pump(Duration::from_millis(300)).await;
    assert!(
        ann_s.saw_type("left"),
        "ann's session is closed when the call ends"
    );
    s.shutdown().await;
}
