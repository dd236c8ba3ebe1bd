//! Races resolve one way for every device: two devices accepting at the
//! same instant (exactly one wins), a cancel racing an accept.

#![allow(clippy::unwrap_used)]

use crate::calls;

use calls::*;

#[tokio::test]
async fn two_devices_accepting_at_once_exactly_one_wins() {
    with_calls(10_000, async |s, api| {
        let (ann, ben, ben_desk, mut a, mut b1, mut b2) = ann_and_ben(s, api).await;
        for _ in 0..10 {
            let id = call(api, &ann, &[ben.account]).await;
            let (r1, r2) = tokio::join!(
                act(api, &ben, id, "accept"),
                act(api, &ben_desk, id, "accept")
            );
            let winners: Vec<i64> = [(r1.status, ben.device), (r2.status, ben_desk.device)]
                .into_iter()
                .filter(|(st, _)| *st == 200)
                .map(|(_, d)| d)
                .collect();
            assert_eq!(winners.len(), 1, "{} {}", r1.status, r2.status);
            assert!(r1.status == 409 || r2.status == 409);
            let winner = winners[0];
            // Every device is told the same winner.
            let answered = expect_call(&mut a, "call_answered", id).await;
            assert_eq!(answered["device_id"], winner);
            for dev in [&mut b1, &mut b2] {
                let stop = expect_call(dev, "call_ringing_stopped", id).await;
                assert_eq!(stop["device_id"], winner);
            }
            let v = get_call(api, &ann, id).await;
            let m = v["call"]["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["account_id"] == ben.account)
                .unwrap()
                .clone();
            assert_eq!(m["device_id"], winner);
            act(api, &ann, id, "leave").await.ok(200);
            assert_eq!(record(api, &ben, id).await["device_id"], winner);
        }
    })
    .await;
}

#[tokio::test]
async fn a_cancel_racing_an_accept_ends_in_one_state_everywhere() {
    with_calls(10_000, async |s, api| {
        let [ann, ben] = users(api, ["ann", "ben"]).await;
        let ben_desk = another_device(api, &ben, "desk").await;
        let mut a = socket(s, &ann).await;
        let mut b2 = socket(s, &ben_desk).await;
        let (mut accepted, mut cancelled) = (0, 0);
        for _ in 0..12 {
            let id = call(api, &ann, &[ben.account]).await;
            let (c, acc) = tokio::join!(act(api, &ann, id, "cancel"), act(api, &ben, id, "accept"));
            assert!(
                (c.status == 200) != (acc.status == 200),
                "exactly one wins: cancel {} accept {}",
                c.status,
                acc.status
            );
            assert!(c.status == 409 || acc.status == 409);
            let v = get_call(api, &ben_desk, id).await;
            if acc.status == 200 {
                accepted += 1;
                assert_eq!(v["call"]["state"], "active");
                expect_call(&mut a, "call_answered", id).await;
                let stop = expect_call(&mut b2, "call_ringing_stopped", id).await;
                assert_eq!(stop["reason"], "answered_elsewhere");
                act(api, &ann, id, "leave").await.ok(200);
                assert_eq!(ended(&mut a, id).await, "answered");
                assert_eq!(ended(&mut b2, id).await, "answered");
                assert_eq!(record(api, &ben, id).await["outcome"], "answered");
            } else {
                cancelled += 1;
                assert_eq!(v["call"]["state"], "ended");
                assert_eq!(ended(&mut a, id).await, "cancelled");
                assert_eq!(ended(&mut b2, id).await, "cancelled");
                assert_eq!(record(api, &ben, id).await["outcome"], "cancelled");
                assert_eq!(record(api, &ann, id).await["outcome"], "cancelled");
            }
        }
        eprintln!("accept won {accepted} times, cancel {cancelled} times");
    })
    .await;
}
