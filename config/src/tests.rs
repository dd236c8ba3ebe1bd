//! Unit tests for loading and validating the configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;

/// No environment at all.
fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

/// Builds an environment from `(name, value)` pairs.
fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads from TOML text standing in for a file named `test.toml`.
fn load_str(
    text: &str,
    env: Vec<(String, String)>,
    cli: &CliOverrides,
) -> Result<Config, ConfigError> {
    Config::load_from(Some(("test.toml", text)), env, cli)
}

/// The key named by an `Invalid` error, or a panic describing the error.
fn invalid_key(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let config = Config::load(None, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(config, Config::default());
    assert_eq!(
        config.server.http,
        "0.0.0.0:7880".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(config.server.log_level, "info,str0m=error");
    assert_eq!(config.media.udp_port, 7882);
    assert_eq!(config.media.bind_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert!(config.media.node_ips.is_empty());
    assert_eq!(config.media.connect_timeout_ms, 30_000);
    assert_eq!(config.media.keyframe_request_interval_ms, 500);
    assert_eq!(config.media.reconnect_timeout_ms, 15_000);
    assert_eq!(config.auth.api_key, "");
    assert_eq!(config.auth.api_secret, "");
    assert_eq!(config.auth.token_ttl_secs, 21_600);
    assert_eq!(config.limits.max_message_bytes, 65_536);
    assert_eq!(config.limits.max_participants_per_room, 0);
    assert_eq!(config.limits.max_tracks_per_participant, 16);
    assert_eq!(config.limits.login_attempts_per_minute, 10);
    assert_eq!(config.limits.login_attempts_per_minute_per_address, 30);
    assert_eq!(config.auth.access_token_ttl_secs, 900);
    assert_eq!(config.auth.refresh_token_ttl_secs, 2_592_000);
    assert!(config.auth.allow_registration);
    assert!(!config.auth.insecure_development_key_on_network);
    assert_eq!(config.limits.max_devices_per_account, 100);
    assert_eq!(config.server.max_connections, 10_000);
    assert_eq!(config.store.path, "vela.sqlite");
    assert_eq!(config.presence.heartbeat_timeout_ms, 30_000);
    config.validate().expect("defaults are valid");
}

#[test]
fn default_toml_matches_default() {
    let parsed: Config = toml::from_str(Config::default_toml()).expect("parse default.toml");
    assert_eq!(parsed, Config::default());
    // Every key is listed, not merely defaulted by serde.
    let listed: toml::Table = toml::from_str(Config::default_toml()).expect("parse table");
    let expected = toml::Table::try_from(Config::default()).expect("serialize");
    assert_eq!(listed, expected);
}

#[test]
fn production_example_is_valid() {
    let text = include_str!("../examples/production.toml");
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert!(!config.auth.is_development());
    assert_eq!(config.media.node_ips.len(), 2);
}

#[test]
fn cluster_node_example_is_valid() {
    let text = include_str!("../examples/cluster-node.toml");
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert!(config.cluster.enabled());
    assert_eq!(config.cluster.node_id, "n1");
    assert!(matches!(
        config.store.location(),
        Ok(crate::StoreUrl::Postgres(_))
    ));
}

#[test]
fn file_overrides_defaults() {
    let text = "[media]\nudp_port = 9000\nnode_ips = [\"203.0.113.1\", \"::1\"]\n";
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(config.media.udp_port, 9000);
    assert_eq!(
        config.media.node_ips,
        vec![
            "203.0.113.1".parse::<IpAddr>().expect("ip"),
            "::1".parse::<IpAddr>().expect("ip")
        ]
    );
    // Untouched keys keep their defaults.
    assert_eq!(config.media.connect_timeout_ms, 30_000);
    assert_eq!(config.server, ServerConfig::default());
}

#[test]
fn real_file_is_read() {
    let path = std::env::temp_dir().join(format!("vela-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[server]\nlog_level = \"debug\"\n").expect("write");
    let result = Config::load(Some(&path), no_env(), &CliOverrides::default());
    let _ = std::fs::remove_file(&path);
    assert_eq!(result.expect("load").server.log_level, "debug");
}

#[test]
fn missing_file_is_read_error() {
    let path = Path::new("/nonexistent/vela/config.toml");
    match Config::load(Some(path), no_env(), &CliOverrides::default()) {
        Err(ConfigError::Read { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn env_overrides_file() {
    let text = "[media]\nudp_port = 9000\nbind_ip = \"10.0.0.1\"\n[auth]\napi_key = \"file\"\napi_secret = \"0123456789abcdef0123456789abcdef\"\n";
    let vars = env(&[
        ("VELA_MEDIA_UDP_PORT", "9100"),
        ("VELA_MEDIA_NODE_IPS", "203.0.113.1, 198.51.100.2"),
        ("VELA_SERVER_HTTP", "127.0.0.1:8080"),
        // Looks like an integer, but the key is a string.
        ("VELA_AUTH_API_KEY", "12345"),
        ("VELA_LIMITS_MAX_PARTICIPANTS_PER_ROOM", "50"),
        // Not ours, or reserved for the binary: ignored.
        ("PATH", "/usr/bin"),
        ("VELA_CONFIG", "/etc/vela.toml"),
        ("VELA_LOG", "trace"),
    ]);
    let config = load_str(text, vars, &CliOverrides::default()).expect("load");
    assert_eq!(config.media.udp_port, 9100);
    assert_eq!(
        config.media.bind_ip,
        "10.0.0.1".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        config.media.node_ips,
        vec![
            "203.0.113.1".parse::<IpAddr>().expect("ip"),
            "198.51.100.2".parse::<IpAddr>().expect("ip")
        ]
    );
    assert_eq!(
        config.server.http,
        "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(config.auth.api_key, "12345");
    assert_eq!(config.limits.max_participants_per_room, 50);
    assert_eq!(config.server.log_level, "info,str0m=error");
}

#[test]
fn empty_env_list_clears_file_list() {
    let text = "[media]\nnode_ips = [\"203.0.113.1\"]\n";
    let vars = env(&[("VELA_MEDIA_NODE_IPS", "")]);
    let config = load_str(text, vars, &CliOverrides::default()).expect("load");
    assert!(config.media.node_ips.is_empty());
}

#[test]
fn cli_overrides_env() {
    let vars = env(&[
        ("VELA_SERVER_HTTP", "127.0.0.1:8080"),
        ("VELA_MEDIA_UDP_PORT", "9100"),
        ("VELA_MEDIA_NODE_IPS", "203.0.113.1"),
        ("VELA_SERVER_LOG_LEVEL", "warn"),
    ]);
    let cli = CliOverrides {
        http: Some("127.0.0.1:9090".parse().expect("addr")),
        udp_port: Some(0),
        tcp_port: Some(0),
        node_ips: vec!["192.0.2.7".parse().expect("ip")],
        log_level: Some("debug".to_owned()),
    };
    let config = Config::load(None, vars.clone(), &cli).expect("load");
    assert_eq!(config.server.http, cli.http.expect("set"));
    assert_eq!(config.media.udp_port, 0);
    assert_eq!(config.media.tcp_port, 0);
    assert_eq!(config.media.node_ips, cli.node_ips);
    assert_eq!(config.server.log_level, "debug");

    // Empty CLI node_ips leaves the environment's value.
    let cli = CliOverrides::default();
    let config = Config::load(None, vars, &cli).expect("load");
    assert_eq!(
        config.media.node_ips,
        vec!["203.0.113.1".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(config.server.log_level, "warn");
}

#[test]
fn unknown_key_in_file_is_named() {
    let err = load_str(
        "[media]\nudp_prot = 1\n",
        no_env(),
        &CliOverrides::default(),
    )
    .expect_err("unknown key");
    assert!(matches!(err, ConfigError::Parse { ref origin, .. } if origin == "test.toml"));
    let text = err.to_string();
    assert!(text.contains("unknown field `udp_prot`"), "{text}");

    let err = load_str("[mediaa]\n", no_env(), &CliOverrides::default()).expect_err("section");
    assert!(err.to_string().contains("mediaa"), "{err}");
}

#[test]
fn bad_type_in_file_is_named() {
    let err = load_str(
        "[media]\nudp_port = \"x\"\n",
        no_env(),
        &CliOverrides::default(),
    )
    .expect_err("bad type");
    assert!(err.to_string().contains("udp_port"), "{err}");
}

#[test]
fn unknown_env_var_is_named() {
    let err = Config::load(
        None,
        env(&[("VELA_MEDIA_UDP_PROT", "1")]),
        &CliOverrides::default(),
    )
    .expect_err("unknown var");
    match err {
        ConfigError::Env { ref var, .. } => assert_eq!(var, "VELA_MEDIA_UDP_PROT"),
        ref other => panic!("expected Env, got {other:?}"),
    }
    assert!(err.to_string().contains("VELA_MEDIA_UDP_PROT"), "{err}");

    let err = Config::load(None, env(&[("VELA_NOPE", "1")]), &CliOverrides::default())
        .expect_err("unknown var");
    assert!(err.to_string().contains("VELA_NOPE"), "{err}");
}

#[test]
fn bad_env_value_is_named() {
    for (var, value) in [
        ("VELA_MEDIA_UDP_PORT", "abc"),
        ("VELA_MEDIA_UDP_PORT", "70000"),
        ("VELA_MEDIA_BIND_IP", "not-an-ip"),
        ("VELA_MEDIA_NODE_IPS", "203.0.113.1,bogus"),
        ("VELA_SERVER_HTTP", "localhost"),
    ] {
        match Config::load(None, env(&[(var, value)]), &CliOverrides::default()) {
            Err(ConfigError::Env { var: v, .. }) => assert_eq!(v, var),
            other => panic!("{var}={value}: expected Env, got {other:?}"),
        }
    }
}

#[test]
fn invalid_values_name_their_key() {
    let cases = [
        ("[server]\nlog_level = \" \"\n", "server.log_level"),
        (
            "[media]\nconnect_timeout_ms = 999\n",
            "media.connect_timeout_ms",
        ),
        (
            "[media]\nkeyframe_request_interval_ms = 49\n",
            "media.keyframe_request_interval_ms",
        ),
        (
            "[media]\nkeyframe_request_interval_ms = 10001\n",
            "media.keyframe_request_interval_ms",
        ),
        (
            "[media]\nreconnect_timeout_ms = 999\n",
            "media.reconnect_timeout_ms",
        ),
        ("[media]\nnode_ips = [\"0.0.0.0\"]\n", "media.node_ips"),
        ("[auth]\ntoken_ttl_secs = 59\n", "auth.token_ttl_secs"),
        (
            "[auth]\napi_key = \"k\"\napi_secret = \"short\"\n",
            "auth.api_secret",
        ),
        (
            "[limits]\nmax_message_bytes = 1023\n",
            "limits.max_message_bytes",
        ),
        (
            "[limits]\nmax_message_bytes = 16777217\n",
            "limits.max_message_bytes",
        ),
        (
            "[limits]\nlogin_attempts_per_minute = 0\n",
            "limits.login_attempts_per_minute",
        ),
        (
            "[limits]\nlogin_attempts_per_minute_per_address = 10001\n",
            "limits.login_attempts_per_minute_per_address",
        ),
        (
            "[limits]\nsignups_per_hour_per_address = 0\n",
            "limits.signups_per_hour_per_address",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\"]\n",
            "server.trusted_proxies",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "server.trusted_proxies",
        ),
        ("[store]\npath = \"\"\n", "store.path"),
        (
            "[presence]\nheartbeat_timeout_ms = 99\n",
            "presence.heartbeat_timeout_ms",
        ),
        (
            "[auth]\naccess_token_ttl_secs = 9\n",
            "auth.access_token_ttl_secs",
        ),
        (
            "[auth]\naccess_token_ttl_secs = 600\nrefresh_token_ttl_secs = 599\n",
            "auth.refresh_token_ttl_secs",
        ),
        ("[auth]\nadmins = [\"root\"]\n", "auth.admins"),
        (
            "[limits]\nmax_queued_messages = 1\n",
            "limits.max_queued_messages",
        ),
        (
            "[server]\nheader_timeout_ms = 0\n",
            "server.header_timeout_ms",
        ),
        ("[server]\nauth_timeout_ms = 0\n", "server.auth_timeout_ms"),
    ];
    for (text, key) in cases {
        assert_eq!(
            invalid_key(load_str(text, no_env(), &CliOverrides::default())),
            key,
            "{text}"
        );
    }
    let err = load_str(cases[1].0, no_env(), &CliOverrides::default()).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "media.connect_timeout_ms: must be at least 1000"
    );

    // Bounds are inclusive.
    let ok = "[media]\nconnect_timeout_ms = 1000\nkeyframe_request_interval_ms = 10000\n[limits]\nmax_message_bytes = 16777216\n";
    load_str(ok, no_env(), &CliOverrides::default()).expect("bounds are valid");
}

#[test]
fn trusted_proxies_are_addresses_or_ranges() {
    let config = Config::default();
    assert!(config.server.trusted_proxies.is_empty());
    assert_eq!(config.limits.signups_per_hour_per_address, 20);
    let c = load_str(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \" 127.0.0.1 \", \"::1\"]\n",
        no_env(),
        &CliOverrides::default(),
    )
    .expect("load");
    let nets = c.server.trusted_proxy_nets();
    assert_eq!(nets.len(), 3);
    let inside = |a: &str| {
        nets.iter()
            .any(|n| n.contains(&a.parse::<std::net::IpAddr>().unwrap()))
    };
    assert!(inside("10.200.0.1") && inside("127.0.0.1") && inside("::1"));
    assert!(!inside("127.0.0.2") && !inside("11.0.0.1"));
}

#[test]
fn api_key_requires_secret() {
    let result = load_str(
        "[auth]\napi_key = \"prod\"\n",
        no_env(),
        &CliOverrides::default(),
    );
    assert_eq!(invalid_key(result), "auth.api_secret");

    let vars = env(&[("VELA_AUTH_API_SECRET", "0123456789abcdef0123456789abcdef")]);
    let result = Config::load(None, vars, &CliOverrides::default());
    assert_eq!(invalid_key(result), "auth.api_key");
}

#[test]
fn effective_key() {
    let mut auth = AuthConfig::default();
    assert!(auth.is_development());
    assert_eq!(auth.effective_key(), (DEV_API_KEY, DEV_API_SECRET));

    auth.api_key = "prod".to_owned();
    auth.api_secret = "0123456789abcdef0123456789abcdef".to_owned();
    assert!(!auth.is_development());
    assert_eq!(
        auth.effective_key(),
        ("prod", "0123456789abcdef0123456789abcdef")
    );
}

#[test]
fn accounts_settings_from_file_and_env() {
    let text = "[store]\npath = \"/tmp/x.sqlite\"\n[presence]\nheartbeat_timeout_ms = 300\n";
    let vars = env(&[
        ("VELA_STORE_PATH", "/var/lib/vela/v.sqlite"),
        ("VELA_AUTH_INSECURE_DEVELOPMENT_KEY_ON_NETWORK", "true"),
        ("VELA_AUTH_ALLOW_REGISTRATION", "false"),
        ("VELA_LIMITS_LOGIN_ATTEMPTS_PER_MINUTE", "3"),
    ]);
    let config = load_str(text, vars, &CliOverrides::default()).expect("load");
    assert_eq!(config.store.path, "/var/lib/vela/v.sqlite");
    assert_eq!(config.presence.heartbeat_timeout_ms, 300);
    assert!(config.auth.insecure_development_key_on_network);
    assert!(!config.auth.allow_registration);
    assert_eq!(config.limits.login_attempts_per_minute, 3);
    match Config::load(
        None,
        env(&[("VELA_PRESENCE_HEARTBEAT_TIMEOUT_MS", "soon")]),
        &CliOverrides::default(),
    ) {
        Err(ConfigError::Env { var, .. }) => assert_eq!(var, "VELA_PRESENCE_HEARTBEAT_TIMEOUT_MS"),
        other => panic!("expected Env, got {other:?}"),
    }
}

#[test]
fn calls_settings_are_checked() {
    let config = Config::default();
    assert_eq!(config.calls.ring_timeout_ms, 30_000);
    assert_eq!(config.calls.join_timeout_ms, 30_000);
    for (text, key) in [
        ("[calls]\nring_timeout_ms = 99\n", "calls.ring_timeout_ms"),
        (
            "[calls]\nring_timeout_ms = 600001\n",
            "calls.ring_timeout_ms",
        ),
        ("[calls]\njoin_timeout_ms = 99\n", "calls.join_timeout_ms"),
        (
            "[calls]\njoin_timeout_ms = 600001\n",
            "calls.join_timeout_ms",
        ),
        ("[calls]\nmax_participants = 1\n", "calls.max_participants"),
    ] {
        assert_eq!(
            invalid_key(load_str(text, no_env(), &CliOverrides::default())),
            key,
            "{text}"
        );
    }
    let c = load_str(
        "[calls]\nring_timeout_ms = 500\n",
        env(&[("VELA_CALLS_MAX_PARTICIPANTS", "3")]),
        &CliOverrides::default(),
    )
    .expect("load");
    assert_eq!(
        (c.calls.ring_timeout_ms, c.calls.max_participants),
        (500, 3)
    );
}

#[test]
fn shards_default_to_one_and_zero_means_one_per_core() {
    let config = load_str("", no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(config.media.shards, 1);
    assert_eq!(config.media.shard_count(), 1);
    let config = load_str("[media]\nshards = 0\n", no_env(), &CliOverrides::default()).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.media.shard_count(), cores);
    let config = load_str(
        "",
        env(&[("VELA_MEDIA_SHARDS", "3")]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(config.media.shard_count(), 3);
}

#[test]
fn the_tcp_port_is_one_for_the_node_off_or_free_with_udp() {
    let config = Config::default();
    assert_eq!(config.media.tcp_port, 7881);
    assert_eq!(config.media.tcp_listen_port(), Some(7881));
    let text = "[media]\ntcp_port = 0\n";
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(config.media.tcp_listen_port(), None, "0 = off");
    // Tests pick free ports: a free UDP port, a free TCP port.
    let text = "[media]\nudp_port = 0\n";
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(config.media.tcp_listen_port(), Some(0));
    let text = "[media]\nudp_port = 0\ntcp_port = 0\n";
    let config = load_str(text, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(config.media.tcp_listen_port(), None);
    // The environment sets it, as every key.
    let vars = env(&[("VELA_MEDIA_TCP_PORT", "443")]);
    let config = Config::load(None, vars, &CliOverrides::default()).expect("load");
    assert_eq!(config.media.tcp_port, 443);
    // HTTP's port cannot be ICE's too.
    let text = "[server]\nhttp = \"0.0.0.0:7881\"\n";
    assert_eq!(
        invalid_key(load_str(text, no_env(), &CliOverrides::default())),
        "media.tcp_port"
    );
    let text = "[media]\ntcp_port = 70000\n";
    assert!(load_str(text, no_env(), &CliOverrides::default()).is_err());
}

#[test]
fn shards_must_fit_their_ports() {
    for text in [
        "[media]\nshards = 257\n",
        "[media]\nudp_port = 65535\nshards = 2\n",
    ] {
        assert_eq!(
            invalid_key(load_str(text, no_env(), &CliOverrides::default())),
            "media.shards",
            "{text}"
        );
    }
    // One per core: the ports of all this machine's cores must fit too.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        let text = "[media]\nudp_port = 65535\nshards = 0\n";
        assert_eq!(
            invalid_key(load_str(text, no_env(), &CliOverrides::default())),
            "media.shards"
        );
    }
    let ok = "[media]\nudp_port = 65534\nshards = 2\n";
    assert!(load_str(ok, no_env(), &CliOverrides::default()).is_ok());
    let ephemeral = "[media]\nudp_port = 0\nshards = 256\n";
    assert!(load_str(ephemeral, no_env(), &CliOverrides::default()).is_ok());
}

#[test]
fn the_relay_needs_a_cluster_an_address_and_credentials() {
    let redis = "[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let secret = "relay_secret = \"0123456789abcdef0123456789abcdef\"\n";
    let cases = [
        // Spreading rooms needs the relay.
        (
            format!("{redis}max_participants_per_node = 10\n"),
            "cluster.max_participants_per_node",
        ),
        // The relay needs the cluster.
        (
            format!("[cluster]\nrelay_addr = \"127.0.0.1:7890\"\n{secret}"),
            "cluster.relay_addr",
        ),
        (
            format!("{redis}relay_addr = \"somewhere\"\n{secret}"),
            "cluster.relay_addr",
        ),
        // Listening everywhere: the others need an address to dial.
        (
            format!("{redis}relay_addr = \"0.0.0.0:7890\"\n{secret}"),
            "cluster.relay_public_addr",
        ),
        (
            format!("{redis}relay_addr = \"0.0.0.0:7890\"\nrelay_public_addr = \"n1\"\n{secret}"),
            "cluster.relay_public_addr",
        ),
        // No credentials, short ones, half a CA, or both kinds.
        (
            format!("{redis}relay_addr = \"127.0.0.1:7890\"\n"),
            "cluster.relay_secret",
        ),
        (
            format!("{redis}relay_addr = \"127.0.0.1:7890\"\nrelay_secret = \"short\"\n"),
            "cluster.relay_secret",
        ),
        (
            format!("{redis}relay_addr = \"127.0.0.1:7890\"\nrelay_ca_cert = \"ca.pem\"\n"),
            "cluster.relay_ca_cert",
        ),
        (
            format!(
                "{redis}relay_addr = \"127.0.0.1:7890\"\nrelay_ca_cert = \"ca.pem\"\nrelay_ca_key = \"ca.key\"\n{secret}"
            ),
            "cluster.relay_secret",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(
            invalid_key(load_str(&text, no_env(), &CliOverrides::default())),
            key,
            "{text}"
        );
    }
    let ok = format!(
        "{redis}relay_addr = \"0.0.0.0:0\"\nrelay_public_addr = \"n1.internal:7890\"\n{secret}max_participants_per_node = 50\n"
    );
    let config = load_str(&ok, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(
        config.cluster.relay_listen(),
        Some("0.0.0.0:0".parse().expect("addr"))
    );
    assert_eq!(
        config.cluster.relay_advertised(7890).as_deref(),
        Some("n1.internal:7890")
    );
    // Without a public address, the listening one with the bound port.
    let ca = format!(
        "{redis}relay_addr = \"10.0.0.11:0\"\nrelay_ca_cert = \"ca.pem\"\nrelay_ca_key = \"ca.key\"\n"
    );
    let config = load_str(&ca, no_env(), &CliOverrides::default()).expect("load");
    assert_eq!(
        config.cluster.relay_advertised(40001).as_deref(),
        Some("10.0.0.11:40001")
    );
    // The secret from the environment, as the example advises.
    let config = load_str(
        &format!("{redis}relay_addr = \"127.0.0.1:7890\"\n"),
        env(&[(
            "VELA_CLUSTER_RELAY_SECRET",
            "from-the-environment-0123456789abcdef",
        )]),
        &CliOverrides::default(),
    )
    .expect("load");
    assert!(config.cluster.relay_listen().is_some());
    // One node: no relay.
    assert_eq!(Config::default().cluster.relay_listen(), None);
}

#[test]
fn turn_servers_from_file_and_env_are_checked() {
    let secret = "0123456789abcdef0123";
    // From the environment, as an operator keeps the secret out of files.
    let config = Config::load(
        None,
        env(&[
            (
                "VELA_TURN_URLS",
                "turn:t.example.com:3478?transport=udp, turns:t.example.com:5349?transport=tcp",
            ),
            ("VELA_TURN_SECRET", secret),
            ("VELA_TURN_TTL_SECS", "3600"),
        ]),
        &CliOverrides::default(),
    )
    .expect("load");
    assert_eq!(config.turn.urls.len(), 2);
    assert!(config.turn.has_turn());
    assert_eq!(config.turn.ttl_secs, 3600);
    assert!(
        !format!("{config:?}").contains(secret),
        "Debug hides the secret"
    );

    // STUN alone needs no secret.
    let stun = load_str(
        "[turn]\nurls = [\"stun:stun.example.com:3478\"]\n",
        no_env(),
        &CliOverrides::default(),
    )
    .expect("stun only");
    assert!(!stun.turn.has_turn());

    for (text, key) in [
        ("[turn]\nurls = [\"turn:t.example.com\"]\n", "turn.secret"),
        (
            "[turn]\nurls = [\"turn:t.example.com\"]\nsecret = \"short\"\n",
            "turn.secret",
        ),
        ("[turn]\nsecret = \"0123456789abcdef0123\"\n", "turn.secret"),
        (
            "[turn]\nurls = [\"https://t.example.com\"]\nsecret = \"0123456789abcdef0123\"\n",
            "turn.urls",
        ),
        (
            "[turn]\nurls = [\"turn:t.example.com\"]\nsecret = \"0123456789abcdef0123\"\nttl_secs = 10\n",
            "turn.ttl_secs",
        ),
    ] {
        let result = load_str(text, no_env(), &CliOverrides::default());
        assert_eq!(invalid_key(result), key, "{text}");
    }
}
