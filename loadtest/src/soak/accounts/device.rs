//! Device sockets: a person's device on the account WebSocket for a while.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{Api, STEP};

/// A device socket: authenticates, waits for `ready`, sends heartbeats and
/// sets its presence for `hold` (or until `stop`), then closes.
pub(super) async fn device_socket(
    api: &Api,
    token: &str,
    hold: Duration,
    mut stop: watch::Receiver<bool>,
) {
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
