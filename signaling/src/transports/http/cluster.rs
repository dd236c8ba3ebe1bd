//! The cluster as operators see it: `GET /api/v1/cluster/nodes`, and the
//! rooms of every node for `GET /api/v1/rooms`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::rooms::Admin;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// `GET /api/v1/cluster/nodes`: the live nodes with their load (with the
/// `roomList` grant, or an account with `rooms:admin`). A single server
/// answers with itself; a node whose Redis is away with 503.
pub(crate) async fn nodes(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin.require_list()?;
    let Some(registry) = &state.nodes else {
        let rooms = state.media.rooms().await?;
        let participants: u64 = rooms.iter().map(|r| u64::from(r.num_participants)).sum();
        return Ok(Json(serde_json::json!({
            "cluster": false,
            "this_node": null,
            "nodes": [{
                "id": null,
                "public_url": null,
                "rooms": rooms.len(),
                "participants": participants,
            }],
        })));
    };
    let nodes = registry.list().await.map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster's Redis is not answering: {e}"),
        );
        err.retry_after = Some(1);
        err
    })?;
    Ok(Json(serde_json::json!({
        "cluster": true,
        "this_node": registry.cluster().node().id,
        "nodes": nodes,
    })))
}

/// Deletes `room`'s parts on the other nodes holding it (`DELETE
/// /api/v1/rooms/{room}?scope=node` on each, with `token`, at once); says
/// whether any had one. A node that does not answer within
/// [`NODE_LIST_TIMEOUT`] is logged and skipped (its part goes on).
pub(crate) async fn delete_on_other_nodes(
    state: &AppState,
    token: &str,
    room: &vela_media::core::RoomId,
) -> bool {
    let (Some(registry), Some(rooms)) = (&state.nodes, state.rooms.redis()) else {
        return false;
    };
    let me = registry.cluster().node().id.clone();
    let members = match rooms.members(room).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot read the room's nodes: deleted on this node only");
            return false;
        }
    };
    let asks = members.into_iter().filter(|m| *m != me).map(|id| async move {
        let node = registry.node(&id).await.ok().flatten()?;
        let url = format!("{}/api/v1/rooms/{room}?scope=node", node.public_url);
        let answer = registry
            .http()
            .delete(url)
            .bearer_auth(token)
            .timeout(NODE_LIST_TIMEOUT)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => Some(true),
            Ok(r) if r.status() == StatusCode::NOT_FOUND => Some(false),
            Ok(r) => {
                tracing::warn!(%room, node = %id, status = %r.status(), "another node did not delete its part of the room");
                None
            }
            Err(e) => {
                tracing::warn!(%room, node = %id, error = %e, "another node did not delete its part of the room");
                None
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .any(|deleted| deleted == Some(true))
}

/// How long another node may take to list its rooms.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// The rooms of the other live nodes (`GET /api/v1/rooms?scope=node` on
/// each, with `token`, at once), and the ids of those that did not answer
/// (or of every node, with `"redis"`, when the registry cannot be read).
pub(crate) async fn other_nodes_rooms(
    state: &AppState,
    token: &str,
    names: Option<&str>,
) -> (Vec<serde_json::Value>, Vec<String>) {
    let Some(registry) = &state.nodes else {
        return (Vec::new(), Vec::new());
    };
    let me = registry.cluster().node().id.clone();
    let nodes = match registry.list().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the nodes for the rooms of the cluster");
            return (Vec::new(), vec!["redis".to_owned()]);
        }
    };
    let asks = nodes
        .into_iter()
        .filter(|n| n.id != me)
        .map(|n| async move {
            let mut query = vec![("scope", "node")];
            if let Some(names) = names {
                query.push(("names", names));
            }
            let Ok(url) =
                reqwest::Url::parse_with_params(&format!("{}/api/v1/rooms", n.public_url), &query)
            else {
                return Err(n.id);
            };
            let answer = registry
                .http()
                .get(url)
                .bearer_auth(token)
                .timeout(NODE_LIST_TIMEOUT)
                .send()
                .await;
            let rooms = match answer {
                Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                _ => None,
            };
            match rooms.as_ref().and_then(|r| r["rooms"].as_array()) {
                Some(rooms) => Ok(rooms.clone()),
                None => Err(n.id),
            }
        });
    let mut rooms = Vec::new();
    let mut missing = Vec::new();
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(theirs) => rooms.extend(theirs),
            Err(id) => missing.push(id),
        }
    }
    (rooms, missing)
}
