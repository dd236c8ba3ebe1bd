//! A throwaway coturn (Debian `coturn`) for the TURN tests: the TURN REST
//! scheme (`use-auth-secret`) with a given secret, plain TURN on UDP and
//! TCP and TURN over TLS on free ports of one address, a certificate made
//! for that address at start, its log captured in the temporary folder.

use std::io::Read as _;
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, program, temp_dir, watchdog};

/// A coturn server of this test alone; killed when dropped.
#[derive(Debug)]
pub struct Coturn {
    ip: IpAddr,
    port: u16,
    tls_port: u16,
    spki_sha256: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Coturn {
    /// Starts coturn listening on `ip` (e.g. the host side of a test's
    /// network namespace link; it relays from there too), checking TURN
    /// REST credentials made with `secret`. It relays to peers at `ip` only
    /// (the SFU under test), as a deployment should restrict it to the SFU's
    /// addresses (README, "Networks that block UDP").
    pub fn start(ip: IpAddr, secret: &str) -> Coturn {
        let dir = temp_dir("coturn");
        let port = free_port();
        let mut tls_port = free_port();
        while tls_port == port {
            tls_port = free_port();
        }
        // A self-signed certificate naming the address clients dial.
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = rcgen::CertificateParams::new(vec![ip.to_string()])
            .and_then(|p| p.self_signed(&key))
            .expect("a self-signed certificate");
        let spki_sha256 = {
            use base64::Engine as _;
            use rcgen::PublicKeyData as _;
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(key.subject_public_key_info());
            base64::engine::general_purpose::STANDARD.encode(digest)
        };
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, pem("CERTIFICATE", cert.der())).expect("write the certificate");
        std::fs::write(&key_path, pem("PRIVATE KEY", &key.serialize_der())).expect("write the key");
        let conf = dir.join("turnserver.conf");
        let text = format!(
            "listening-ip={ip}
relay-ip={ip}
listening-port={port}
tls-listening-port={tls_port}
use-auth-secret
static-auth-secret={secret}
realm=vela.test
cert={cert}
pkey={key}
fingerprint
no-cli
no-rfc5780
no-dtls
no-multicast-peers
denied-peer-ip=0.0.0.0-255.255.255.255
denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
allowed-peer-ip={ip}
userdb={db}
pidfile={pid}
log-file=stdout
simple-log
verbose
",
            cert = cert_path.display(),
            key = key_path.display(),
            db = dir.join("turndb").display(),
            pid = dir.join("turnserver.pid").display(),
        );
        std::fs::write(&conf, text).expect("write turnserver.conf");
        let log = std::fs::File::create(dir.join("log")).expect("create the log");
        let child = Command::new(program("turnserver"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("start turnserver (scripts/test.sh installs coturn)");
        watchdog(&format!(
            "kill -9 {} 2>/dev/null; rm -rf '{}'",
            child.id(),
            dir.display()
        ));
        let mut coturn = Coturn {
            ip,
            port,
            tls_port,
            spki_sha256,
            dir,
            child: Some(child),
        };
        coturn.wait_listening(Duration::from_secs(10));
        coturn
    }

    /// Waits until both TCP listeners accept, or panics with the log.
    fn wait_listening(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let up = [self.port, self.tls_port].iter().all(|&p| {
                TcpStream::connect_timeout(&(self.ip, p).into(), Duration::from_millis(200)).is_ok()
            });
            if up {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > until {
                panic!(
                    "turnserver did not start on {}:{} and :{} ({exited:?}):\n{}",
                    self.ip,
                    self.port,
                    self.tls_port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `turn:<ip>:<port>?transport=udp`.
    pub fn turn_udp_url(&self) -> String {
        format!("turn:{}:{}?transport=udp", self.ip, self.port)
    }

    /// `turn:<ip>:<port>?transport=tcp`.
    pub fn turn_tcp_url(&self) -> String {
        format!("turn:{}:{}?transport=tcp", self.ip, self.port)
    }

    /// `turns:<ip>:<tls port>?transport=tcp`: TURN over TLS.
    pub fn turns_url(&self) -> String {
        format!("turns:{}:{}?transport=tcp", self.ip, self.tls_port)
    }

    /// The plain TURN port (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TURN-over-TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate, as
    /// Chromium's `--ignore-certificate-errors-spki-list` takes it.
    pub fn spki_sha256(&self) -> &str {
        &self.spki_sha256
    }

    /// What coturn logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

/// DER as PEM (rcgen's own PEM output is a feature the workspace leaves off).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Drop for Coturn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
