//! The HTTP server: wiring, routes, start and graceful shutdown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use vela_config::Config;
use vela_media::core::{RoomId, SfuConfig};
use vela_media::relay::RelayAuth;
use vela_media::{DriverFailed, MediaHandle, MediaSockets, TcpListeners};

use crate::domain::ids::now_ms;
use crate::services::auth::{LoginLimiter, SignupLimiter};
use crate::services::cluster::{Cluster, NodeIdentity};
use crate::services::devices::Devices;
use crate::services::hub::{DeviceBus, Hub};
use crate::services::metrics;
use crate::services::node_registry::NodeRegistry;
use crate::services::password::PasswordHasher;
use crate::services::presence::PresenceHandle;
use crate::services::room_directory::{RedisDirectory, RoomDirectory};
use crate::services::singleton::Singleton;
use crate::services::store::{Store, StoreLocation};
use crate::services::token::{TokenKeys, VideoGrant};
use crate::transports::device_socket;
use crate::transports::error::ApiError;
use crate::transports::http as api;
use crate::transports::listener::ListenerLimits;
use crate::transports::room_socket as session;
use crate::transports::state::AppState;
use crate::transports::whip;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The media port could not be opened.
    #[error(transparent)]
    Media(#[from] vela_media::BindError),
    /// The database could not be opened or migrated.
    #[error("cannot open the store at {path}: {source}")]
    Store {
        /// The configured path.
        path: String,
        /// The cause.
        source: crate::services::store::StoreError,
    },
    /// The cluster's Redis could not be reached.
    #[error("cannot join the cluster at {url}: {source}")]
    Cluster {
        /// The configured `cluster.redis_url`.
        url: String,
        /// The cause.
        source: crate::services::cluster::ClusterError,
    },
    /// The media relay between nodes could not start: its credentials
    /// (`cluster.relay_secret`, the CA files) or its address.
    #[error("cannot start the media relay on {addr}: {reason}")]
    Relay {
        /// `cluster.relay_addr`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running server.
pub struct RunningServer {
    /// Where HTTP and WebSocket clients connect.
    pub http_addr: SocketAddr,
    /// The media port of the first shard (its first advertised address).
    pub udp_addr: SocketAddr,
    /// The ICE-over-TCP port (its first advertised address); `None` when
    /// `media.tcp_port` is 0.
    pub tcp_addr: Option<SocketAddr>,
    /// A handle to the media driver.
    pub media: MediaHandle,
    shutdown: watch::Sender<bool>,
    socket_tasks: TaskTracker,
    http: JoinHandle<()>,
    /// The media drivers' supervisor, until it has ended.
    driver: Option<vela_media::MediaTask>,
    presence: JoinHandle<()>,
    calls: JoinHandle<()>,
    webhooks: JoinHandle<()>,
    /// The cluster heartbeat, which deregisters the node as it ends.
    node_heartbeat: Option<JoinHandle<()>>,
    store: Store,
}

impl RunningServer {
    /// Waits until a media driver fails (panics), taking its rooms with it;
    /// pending for as long as the drivers run, or after they stopped as
    /// asked. A server should then shut down and exit with an error, so that
    /// it is restarted rather than left serving with rooms that are gone.
    pub async fn media_failure(&mut self) -> DriverFailed {
        let Some(driver) = self.driver.as_mut() else {
            return std::future::pending().await;
        };
        let ended = driver.await;
        self.driver = None;
        match ended {
            Ok(Err(failed)) => failed,
            Ok(Ok(())) => std::future::pending().await,
            // The supervisor itself cannot panic; a cancelled one means the
            // runtime is going away.
            Err(e) => DriverFailed {
                shard: 0,
                reason: format!("supervisor ended: {e}"),
            },
        }
    }

    /// The store the server keeps its accounts in (tools and tests: e.g.
    /// granting a role as `vela admin grant` does).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes every peer and session, stops the listeners, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.media.shutdown().await;
        // Upgraded WebSockets outlive the HTTP server: wait for their `left`.
        self.socket_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.socket_tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        if let Some(driver) = self.driver {
            let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.presence).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.calls).await;
        if let Some(heartbeat) = self.node_heartbeat {
            let _ = tokio::time::timeout(Duration::from_secs(3), heartbeat).await;
        }
        // Queued webhooks (the rooms just finished) get a last chance.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.webhooks).await;
        self.store.close().await;
    }
}

/// Binds the media port and the HTTP listener as configured and starts serving.
pub async fn spawn(config: Config) -> Result<RunningServer, StartError> {
    let location =
        StoreLocation::from_config(&config.store).map_err(|source| StartError::Store {
            path: config.store.path.clone(),
            source,
        })?;
    let store = Store::connect(&location)
        .await
        .map_err(|source| StartError::Store {
            path: location.to_string(),
            source,
        })?;
    tracing::info!(store = %location, "store open");
    let ips = if config.media.node_ips.is_empty() {
        vela_media::local_addresses()
    } else {
        config.media.node_ips.clone()
    };
    // A shard per core asked for, each on its own port: no datagram has to
    // cross to another core to find its room.
    let n = config.media.shard_count();
    // ICE over TCP: one port for the node, whatever the shards (a firewall
    // opens one port); each connection finds its shard by its first STUN
    // request.
    let tcp = match config.media.tcp_listen_port() {
        Some(port) => {
            let listeners = TcpListeners::bind(&ips, port, config.media.bind_ip).await?;
            tracing::info!(candidates = ?listeners.advertised(), "ICE over TCP port open");
            Some(listeners)
        }
        None => None,
    };
    let tcp_candidates = tcp
        .as_ref()
        .map(TcpListeners::advertised)
        .unwrap_or_default();
    let mut shards = Vec::with_capacity(n);
    for k in 0..n {
        let port = match config.media.udp_port {
            0 => 0,
            p => p + k as u16, // validated to fit
        };
        let sockets = MediaSockets::bind(&ips, port, config.media.bind_ip).await?;
        let advertised = sockets.advertised();
        tracing::info!(shard = k, candidates = ?advertised, "media port open");
        let sfu_config = SfuConfig::new(advertised)
            .set_connect_timeout(Duration::from_millis(config.media.connect_timeout_ms))
            .set_keyframe_interval(Duration::from_millis(
                config.media.keyframe_request_interval_ms,
            ))
            .set_max_participants_per_room(config.limits.max_participants_per_room)
            .set_max_tracks_per_participant(config.limits.max_tracks_per_participant)
            .set_reconnect_timeout(Duration::from_millis(config.media.reconnect_timeout_ms))
            .set_id_space(k as u64 + 1, n as u64)
            .set_tcp_candidates(tcp_candidates.clone());
        shards.push((sockets, sfu_config));
    }
    let udp_addr = shards[0].0.advertised()[0];
    let tcp_addr = tcp_candidates.first().copied();

    let bind = http_bind_addr(&config);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| StartError::Http { addr: bind, source })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| StartError::Http { addr: bind, source })?;

    let cluster = if config.cluster.enabled() {
        let node = NodeIdentity::from_config(&config.cluster, http_addr);
        let cluster = Cluster::connect(&config.cluster, node)
            .await
            .map_err(|source| StartError::Cluster {
                url: config.cluster.redis_url.clone(),
                source,
            })?;
        tracing::info!(node = %cluster.node().id, url = %cluster.node().public_url, "joined the cluster");
        Some(cluster)
    } else {
        None
    };
    // In a cluster, this run's node number makes its media ids unique
    // among the nodes (a room spread over nodes shows them all).
    let node_number = match &cluster {
        Some(c) => c
            .allocate_node_number()
            .await
            .map_err(|source| StartError::Cluster {
                url: config.cluster.redis_url.clone(),
                source,
            })?,
        None => 0,
    };
    let id_base = crate::services::cluster::id_base(node_number);
    if cluster.is_some() {
        tracing::info!(node_number, id_base, "media ids of this run");
    }
    let (events_tx, events_rx) =
        tokio::sync::mpsc::channel(crate::services::webhook::ROOM_EVENT_QUEUE);
    let (media, driver, relay_addr) =
        spawn_media(&config, shards, tcp, id_base, cluster.as_ref(), events_tx)?;
    let media = media.with_signal_queue(config.limits.max_queued_messages as usize);
    // In a cluster the nodes are registered, and rooms placed on them,
    // through Redis; the heartbeat (started below) keeps this node and its
    // rooms registered.
    let directory = cluster.as_ref().map(|c| {
        let registry = NodeRegistry::new(c.clone()).with_relay(node_number, relay_addr);
        (
            registry.clone(),
            RedisDirectory::new(registry, Some(media.clone())),
        )
    });
    // The store writes this node's heartbeat, open calls and presence marks
    // under its cluster id, so nodes sharing a database recover only their
    // own rows after a crash.
    let store = match &cluster {
        Some(cluster) => store.for_node(&cluster.node().id),
        None => store,
    };
    let (key, secret) = config.auth.effective_key();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let socket_tasks = TaskTracker::new();
    let hub = match &cluster {
        Some(c) => Hub::clustered(c.clone(), shutdown_rx.clone()).await,
        None => Hub::new(DeviceBus::Local),
    };
    // Before the first heartbeat of this run: who was present at a crash.
    // Not in a cluster: presence lives in Redis, where the devices of a
    // node that died expire (and get their last-seen time) like any other,
    // and another node's present accounts are not this node's to end.
    let recovered = if cluster.is_some() {
        0
    } else {
        store
            .recover_presence(now_ms())
            .await
            .map_err(|source| StartError::Store {
                path: location.to_string(),
                source,
            })?
    };
    if recovered > 0 {
        tracing::warn!(
            accounts = recovered,
            "accounts present at a crash: last seen at the last heartbeat"
        );
    }
    let presence_timeout = Duration::from_millis(config.presence.heartbeat_timeout_ms);
    let (presence, presence_task) = match &cluster {
        Some(c) => PresenceHandle::spawn_shared(
            c.clone(),
            presence_timeout,
            store.clone(),
            hub.clone(),
            shutdown_rx.clone(),
        ),
        None => PresenceHandle::spawn(
            presence_timeout,
            store.clone(),
            hub.clone(),
            shutdown_rx.clone(),
        ),
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let (webhooks, webhooks_task) = crate::services::webhook::spawn(
        &config.webhooks,
        key,
        secret,
        metrics.clone(),
        events_rx,
        crate::services::webhook::ClusterView {
            cluster: cluster.clone(),
            rooms: directory.as_ref().map(|(_, d)| d.clone()),
        },
        shutdown_rx.clone(),
    );
    let (calls, calls_task) = crate::services::calls::CallsHandle::spawn(
        &config.calls,
        store.clone(),
        hub.clone(),
        media.clone(),
        webhooks,
        cluster.clone(),
        shutdown_rx.clone(),
    )
    .await
    .map_err(|source| StartError::Store {
        path: location.to_string(),
        source,
    })?;
    let (rooms, registry, heartbeat_task) = match directory {
        None => (RoomDirectory::Local, None, None),
        Some((registry, directory)) => {
            let task = tokio::spawn(crate::services::node_registry::run(
                registry.clone(),
                directory.clone(),
                media.clone(),
                shutdown_rx.clone(),
            ));
            (RoomDirectory::Redis(directory), Some(registry), Some(task))
        }
    };
    let state = AppState {
        calls,
        socket_tasks: socket_tasks.clone(),
        keys: TokenKeys::new(key, secret),
        login_limiter: Arc::new(LoginLimiter::new(
            config.limits.login_attempts_per_minute,
            config.limits.login_attempts_per_minute_per_address,
            cluster.as_ref(),
        )),
        signup_limiter: Arc::new(SignupLimiter::new(
            config.limits.signups_per_hour_per_address,
            cluster.as_ref(),
        )),
        hasher: PasswordHasher::new(
            config
                .limits
                .password_hashes(std::thread::available_parallelism().map_or(1, |n| n.get())),
        ),
        trusted_proxies: config.server.trusted_proxy_nets().into(),
        ice_servers: Arc::new(crate::domain::ice::IceServers::from_config(&config.turn)),
        config: Arc::new(config),
        media: media.clone(),
        whip_sessions: Arc::default(),
        shutdown: shutdown_rx.clone(),
        store: store.clone(),
        devices: Devices::new(store.clone(), hub.clone(), presence.clone()),
        hub,
        presence,
        rooms,
        cluster,
        nodes: registry.clone(),
        resumable: Default::default(),
        metrics,
        connections: Arc::default(),
    };
    // After the calls and presence a crash left were recovered.
    tokio::spawn(heartbeat(store.clone(), shutdown_rx.clone()));
    // One node of a cluster sweeps the shared store (its sign-outs are
    // pushed once, not once per node).
    let sweeper = Singleton::start(
        state.cluster.as_ref(),
        "sign-out-expired-devices",
        shutdown_rx.clone(),
    )
    .await;
    tokio::spawn(sign_out_expired_devices(
        state.clone(),
        sweeper,
        shutdown_rx.clone(),
    ));
    tokio::spawn(
        state
            .devices
            .clone()
            .watch_missed_closes(shutdown_rx.clone()),
    );
    let limits = ListenerLimits::new(
        state.config.server.max_connections,
        Duration::from_millis(state.config.server.header_timeout_ms),
    );
    let connections = state.connections.clone();
    let app = router(state);
    tracing::info!(%http_addr, max_connections = limits.max_connections, "http listening");
    let http = tokio::spawn(crate::transports::listener::serve(
        listener,
        app,
        limits,
        connections,
        shutdown_rx,
    ));
    Ok(RunningServer {
        http_addr,
        udp_addr,
        tcp_addr,
        media,
        shutdown: shutdown_tx,
        socket_tasks,
        http,
        driver: Some(driver),
        presence: presence_task,
        calls: calls_task,
        webhooks: webhooks_task,
        node_heartbeat: heartbeat_task,
        store,
    })
}

/// Starts the media shards with this run's id base and, in a cluster with
/// `cluster.relay_addr`, the media relay to the other nodes: returns the
/// handle, the driver, and where the other nodes reach this node's relay
/// (empty: no relay).
fn spawn_media(
    config: &Config,
    shards: Vec<(MediaSockets, SfuConfig)>,
    tcp: Option<TcpListeners>,
    id_base: u64,
    cluster: Option<&Cluster>,
    events: tokio::sync::mpsc::Sender<vela_media::core::RoomEvent>,
) -> Result<(MediaHandle, vela_media::MediaTask, String), StartError> {
    let mut options = vela_media::NodeOptions::new()
        .set_id_base(id_base)
        .set_max_room_participants_per_shard(config.media.max_room_participants_per_shard);
    if let Some(tcp) = tcp {
        options = options.set_tcp(tcp);
    }
    let mut advertised = String::new();
    if let (Some(cluster), Some(listen)) = (cluster, config.cluster.relay_listen()) {
        let failed = |reason: String| StartError::Relay {
            addr: listen.to_string(),
            reason,
        };
        let (cert, key) = (
            config.cluster.relay_ca_cert.trim(),
            config.cluster.relay_ca_key.trim(),
        );
        let auth = if cert.is_empty() {
            RelayAuth::from_secret(config.cluster.relay_secret.as_bytes())
        } else {
            RelayAuth::from_ca_files(std::path::Path::new(cert), std::path::Path::new(key))
        }
        .map_err(|e| failed(e.to_string()))?;
        let (endpoint, relay_events) = vela_media::relay::RelayEndpoint::bind(
            listen,
            &auth,
            vela_media::relay::RelayConfig::new(cluster.node().id.clone()),
        )
        .map_err(|e| failed(e.to_string()))?;
        let bound = endpoint.local_addr().map_err(|e| failed(e.to_string()))?;
        advertised = config
            .cluster
            .relay_advertised(bound.port())
            .unwrap_or_default();
        tracing::info!(relay = %bound, %advertised, "media relay listening");
        options = options.set_relay(endpoint, relay_events);
    }
    let (media, driver) = vela_media::spawn_node(shards, Some(events), options);
    Ok((media, driver, advertised))
}

/// Where HTTP listens: `server.http`, except that with the development key
/// (whose secret is public: anyone reaching the server could mint admin
/// tokens) it is loopback only unless explicitly allowed.
fn http_bind_addr(config: &Config) -> SocketAddr {
    let mut addr = config.server.http;
    if !config.auth.is_development() {
        return addr;
    }
    if config.auth.insecure_development_key_on_network {
        tracing::warn!(
            %addr,
            "no API key configured, and auth.insecure_development_key_on_network is set: anyone who reaches this server can mint tokens (/api/dev-token) and admin tokens. Never in production."
        );
        return addr;
    }
    if !addr.ip().is_loopback() {
        let loopback: IpAddr = match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        tracing::warn!(
            configured = %addr,
            "no API key configured: the development key's secret is public, so this server listens on loopback only. Set auth.api_key and auth.api_secret to serve other hosts (or auth.insecure_development_key_on_network = true, never in production)."
        );
        addr.set_ip(loopback);
    } else {
        tracing::warn!(
            "no API key configured: using the development key (loopback only); anyone on this host can mint tokens via /api/dev-token"
        );
    }
    addr
}

/// How often the server notes in the store that it runs: how much of an
/// interrupted call's length, or of a present account's last-seen time, a
/// crash can cut off.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Notes that the server runs at start and every [`HEARTBEAT_EVERY`], until
/// shutdown.
async fn heartbeat(store: Store, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if let Err(e) = store.mark_alive(now_ms()).await {
            tracing::warn!(error = %e, "cannot note the heartbeat");
        }
    }
}

/// How often devices whose logins ran out are signed out.
const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Signs out devices whose logins expired, at start and every
/// [`SESSION_SWEEP_EVERY`], until shutdown; in a cluster only while this
/// node holds the sweep's lease.
async fn sign_out_expired_devices(
    state: AppState,
    lease: Singleton,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SESSION_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !lease.is_held() {
            continue;
        }
        let access_ttl_ms =
            i64::try_from(state.config.auth.access_token_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
        if let Err(e) = state
            .devices
            .sign_out_expired(now_ms(), access_ttl_ms)
            .await
        {
            tracing::warn!(error = ?e, "signing out expired devices failed");
        }
    }
}

// The device socket's route, documented with the HTTP API (whose router
// does not import the device socket).
api::documented_routes! {
    "/api/v1/ws" => get(device_socket::upgrade);
}

fn router(state: AppState) -> Router {
    let limit = state.config.limits.max_message_bytes;
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(api::metrics::metrics))
        .route("/api/dev-token", get(dev_token))
        .merge(api::routes())
        .merge(documented_router())
        // LiveKit's RoomService (docs/livekit.md), beside the documented API.
        .merge(crate::transports::twirp::routes())
        .merge(crate::transports::livekit_rtc::routes())
        .route("/ws", get(session::upgrade))
        .route("/whip/{room}", post(whip::whip))
        .route("/whep/{room}", post(whip::whep))
        .route(
            "/whip/{room}/{session}",
            delete(whip::end).patch(whip::patch),
        )
        .route(
            "/whep/{room}/{session}",
            delete(whip::end).patch(whip::patch),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::transports::cluster::redirect_room_api,
        ))
        .with_state(state)
}

/// `GET /readyz`: 200 when new work can be taken (store answering, media
/// driver running, the cluster's Redis answering, this node registered and
/// on its bus, not shutting down), else 503 with the reason.
async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |why: &'static str| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if *state.shutdown.borrow() {
        return not_ready("shutting down");
    }
    let media = tokio::time::timeout(Duration::from_secs(2), state.media.stats()).await;
    if !matches!(media, Ok(Ok(_))) {
        return not_ready("media driver not answering");
    }
    let store = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    if !matches!(store, Ok(Ok(()))) {
        return not_ready("store not answering");
    }
    if let Some(cluster) = &state.cluster {
        let redis = tokio::time::timeout(Duration::from_secs(2), cluster.ping()).await;
        if !matches!(redis, Ok(Ok(()))) {
            return not_ready("redis not answering");
        }
        if !state.hub.on_bus() {
            return not_ready("not on the cluster bus");
        }
    }
    if state.nodes.as_ref().is_some_and(|n| !n.registered()) {
        return not_ready("not yet registered in the cluster");
    }
    "ready".into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    #[serde(default)]
    name: Option<String>,
    /// `1` or `true`: the token may moderate the room (roomAdmin).
    #[serde(default)]
    admin: Option<String>,
}

/// Mints tokens for the web page, only while the development key is in use.
async fn dev_token(
    State(state): State<AppState>,
    Query(q): Query<DevTokenQuery>,
) -> Result<Response, ApiError> {
    if !state.config.auth.is_development() {
        return Err(ApiError::not_found(
            "development tokens are off: this server has an API key",
        ));
    }
    let room = RoomId::new(&q.room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if q.identity.is_empty() || q.identity.len() > 128 {
        return Err(ApiError::bad_request(
            "identity must be 1 to 128 characters",
        ));
    }
    let grant = VideoGrant {
        room: Some(room.to_string()),
        room_join: true,
        can_publish: Some(true),
        can_subscribe: Some(true),
        room_admin: matches!(q.admin.as_deref(), Some("1" | "true")),
        ..VideoGrant::default()
    };
    let token = state.keys.issue(
        &q.identity,
        q.name.as_deref(),
        grant,
        Duration::from_secs(state.config.auth.token_ttl_secs),
    )?;
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "token": token })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_operation() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("transports/http/openapi.json"))
                .expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        // Both lists the routers are built from.
        let operations: Vec<_> = api::OPERATIONS.iter().chain(OPERATIONS).collect();
        for (method, path) in &operations {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "openapi.json lacks {method} {path}");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| {
                p.as_object()
                    .map_or(0, |m| m.keys().filter(|k| *k != "parameters").count())
            })
            .sum();
        assert_eq!(
            documented,
            operations.len(),
            "openapi.json documents operations the server lacks"
        );
    }
}
