//! vela's fuzz targets (libFuzzer), one module each; RELIABILITY.md,
//! "Fuzzing", says what each reaches and how to run them.
//!
//! Every target takes arbitrary bytes and must not panic: refusing the
//! input is fine. Some also check a property that must hold whatever the
//! input (said at each).

pub mod api_json;
pub mod config;
pub mod device_socket;
mod net;
pub mod offer;
pub mod room_protocol;
pub mod sfu_datagrams;
pub mod tcp_framing;
mod world;

/// Whether `VELA_FUZZ_DEBUG` is set: the targets then say what each input
/// did (to check that seeds reach what they should).
pub fn debug_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("VELA_FUZZ_DEBUG").is_some())
}

/// `eprintln!` when [`debug_enabled`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::debug_enabled() {
            eprintln!($($arg)*);
        }
    };
}

/// A fuzz target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// [`room_protocol`].
    RoomProtocol,
    /// [`device_socket`].
    DeviceSocket,
    /// [`api_json`].
    ApiJson,
    /// [`config`].
    Config,
    /// [`sfu_datagrams`].
    SfuDatagrams,
    /// [`offer`].
    Offer,
    /// [`tcp_framing`].
    TcpFraming,
}

impl Target {
    /// Every target's name, as `scripts/fuzz.sh` and `VELA_FUZZ_TARGET` spell it.
    pub const NAMES: [&str; 7] = [
        "room_protocol",
        "device_socket",
        "api_json",
        "config",
        "sfu_datagrams",
        "offer",
        "tcp_framing",
    ];

    /// The target of this name.
    pub fn from_name(name: &str) -> Option<Target> {
        Some(match name {
            "room_protocol" => Target::RoomProtocol,
            "device_socket" => Target::DeviceSocket,
            "api_json" => Target::ApiJson,
            "config" => Target::Config,
            "sfu_datagrams" => Target::SfuDatagrams,
            "offer" => Target::Offer,
            "tcp_framing" => Target::TcpFraming,
            _ => return None,
        })
    }

    /// Runs one input.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::RoomProtocol => room_protocol::run(data),
            Target::DeviceSocket => device_socket::run(data),
            Target::ApiJson => api_json::run(data),
            Target::Config => config::run(data),
            Target::SfuDatagrams => sfu_datagrams::run(data),
            Target::Offer => offer::run(data),
            Target::TcpFraming => tcp_framing::run(data),
        }
    }
}
