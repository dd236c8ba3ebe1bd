//! The cluster as operators see it: `GET /api/v1/cluster/nodes`.

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
