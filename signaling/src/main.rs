//! The `vela` binary: runs the server, or prints an access token.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vela_config::{CliOverrides, Config};
use vela_signaling::store::{Store, StoreLocation};
use vela_signaling::token::{TokenKeys, VideoGrant};

/// A WebRTC SFU with signaling, WHIP and WHEP.
#[derive(Parser, Debug)]
#[command(name = "vela", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug)]
struct Common {
    /// A TOML configuration file (see config/default.toml).
    #[arg(long, global = true, env = "VELA_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP and WebSocket listen address, e.g. 0.0.0.0:7880.
    #[arg(long, global = true)]
    http: Option<SocketAddr>,
    /// The UDP port for all media (0 picks a free one).
    #[arg(long, global = true)]
    udp_port: Option<u16>,
    /// The TCP port for ICE over TCP (0 = off).
    #[arg(long, global = true)]
    tcp_port: Option<u16>,
    /// An address advertised to clients as an ICE host candidate (repeatable);
    /// by default every local address.
    #[arg(long = "node-ip", global = true)]
    node_ips: Vec<IpAddr>,
    /// Log filter, e.g. info or vela_media_core=debug.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print an access token for a room.
    Token(TokenArgs),
    /// Grant, take away or list admin rights, in the store of this
    /// configuration (the server may be running; it reads roles on every
    /// request).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Make an existing account an admin.
    Grant {
        /// The account's username.
        username: String,
    },
    /// Take admin rights away from an account.
    Revoke {
        /// The account's username.
        username: String,
    },
    /// List the admins.
    List,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The room the token admits to.
    #[arg(long)]
    room: String,
    /// The participant identity.
    #[arg(long)]
    identity: String,
    /// The display name.
    #[arg(long)]
    name: Option<String>,
    /// Do not grant publishing.
    #[arg(long)]
    no_publish: bool,
    /// Do not grant subscribing.
    #[arg(long)]
    no_subscribe: bool,
    /// Grant roomAdmin on the room: the server API's participant operations
    /// and moderation in the web page.
    #[arg(long)]
    admin: bool,
    /// Grant roomCreate: create and delete rooms through the server API.
    #[arg(long)]
    create: bool,
    /// Grant roomList: list rooms through the server API.
    #[arg(long)]
    list: bool,
    /// Lifetime in seconds (default: auth.token_ttl_secs).
    #[arg(long)]
    ttl: Option<u64>,
}

fn load(common: &Common) -> Result<Config, String> {
    let cli = CliOverrides {
        http: common.http,
        udp_port: common.udp_port,
        tcp_port: common.tcp_port,
        node_ips: common.node_ips.clone(),
        log_level: common.log_level.clone(),
    };
    Config::load(common.config.as_deref(), std::env::vars(), &cli)
        .map_err(|e| format!("configuration error: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli.common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vela: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Token(args)) => token(&config, &args),
        Some(Command::Admin(cmd)) => admin(&config, cmd),
        None | Some(Command::Serve) => serve(config),
    }
}

fn token(config: &Config, args: &TokenArgs) -> ExitCode {
    if let Err(e) = vela_media::core::RoomId::new(&args.room) {
        eprintln!("vela: {e}");
        return ExitCode::from(2);
    }
    let (key, secret) = config.auth.effective_key();
    if config.auth.is_development() {
        eprintln!("vela: warning: signing with the development key (no auth.api_key configured)");
    }
    let grant = VideoGrant {
        room: Some(args.room.clone()),
        room_join: true,
        can_publish: Some(!args.no_publish),
        can_subscribe: Some(!args.no_subscribe),
        room_admin: args.admin,
        room_create: args.create,
        room_list: args.list,
        ..VideoGrant::default()
    };
    let ttl = Duration::from_secs(args.ttl.unwrap_or(config.auth.token_ttl_secs));
    match TokenKeys::new(key, secret).issue(&args.identity, args.name.as_deref(), grant, ttl) {
        Ok(t) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{t}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vela: {e}");
            ExitCode::FAILURE
        }
    }
}

fn admin(config: &Config, cmd: AdminCommand) -> ExitCode {
    let location = match StoreLocation::from_config(&config.store) {
        Ok(location) => location,
        Err(e) => {
            eprintln!("vela: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `store.url` wins over `store.path`: only an SQLite store in memory
    // keeps nothing between runs.
    if location
        == (StoreLocation::Sqlite {
            path: ":memory:".into(),
        })
    {
        eprintln!("vela: store.path is :memory:, which keeps no accounts between runs");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vela: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(admin_in_store(&location, cmd)) {
        Ok(text) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vela: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn admin_in_store(location: &StoreLocation, cmd: AdminCommand) -> Result<String, String> {
    use vela_signaling::account::Role;
    // The store the server opens: the same backend, from the same settings.
    let store = Store::connect(location)
        .await
        .map_err(|e| format!("cannot open the store ({location}): {e}"))?;
    let result = async {
        match cmd {
            AdminCommand::List => {
                let mut out = String::new();
                let mut after = 0;
                loop {
                    let page = store
                        .list_accounts(after, 500)
                        .await
                        .map_err(|e| e.to_string())?;
                    let Some(last) = page.last() else { break };
                    after = last.id.0;
                    for a in page.iter().filter(|a| a.is_admin()) {
                        out.push_str(&format!("{}\t{}\n", a.id, a.username));
                    }
                }
                Ok(out)
            }
            AdminCommand::Grant { username } => {
                let (mut account, _) = find(&store, &username).await?;
                if !account.roles.contains(&Role::Admin) {
                    account.roles.push(Role::Admin);
                    store
                        .set_roles(account.id, &account.roles)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(format!("{} is an admin\n", account.username))
            }
            AdminCommand::Revoke { username } => {
                let (mut account, _) = find(&store, &username).await?;
                account.roles.retain(|r| *r != Role::Admin);
                store
                    .set_roles(account.id, &account.roles)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("{} is not an admin\n", account.username))
            }
        }
    }
    .await;
    store.close().await;
    result
}

async fn find(
    store: &Store,
    username: &str,
) -> Result<(vela_signaling::account::Account, String), String> {
    let name = username.trim().to_ascii_lowercase();
    store
        .account_by_username(&name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no account named {name:?}"))
}

fn serve(config: Config) -> ExitCode {
    let filter = std::env::var("VELA_LOG").unwrap_or_else(|_| config.server.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A socket per client: the usual soft limit (1024) is far too low, and
    // running out fails accept for everyone.
    match vela_signaling::listener::raise_open_files_limit() {
        Ok(n) => tracing::info!(open_files = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vela: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut server = match vela_signaling::spawn(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            "vela is up: open http://{}/ in two browser tabs",
            display_addr(server.http_addr)
        );
        let code = tokio::select! {
            () = wait_for_signal() => ExitCode::SUCCESS,
            failed = server.media_failure() => {
                // Exit with an error, so that a supervisor restarts the
                // server instead of it serving on without a shard.
                tracing::error!(error = %failed, "a media driver failed");
                ExitCode::FAILURE
            }
        };
        tracing::info!("shutting down");
        server.shutdown().await;
        tracing::info!("bye");
        code
    })
}

fn display_addr(a: SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("127.0.0.1:{}", a.port())
    } else {
        a.to_string()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
