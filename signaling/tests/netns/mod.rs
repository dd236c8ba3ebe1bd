//! A network namespace joined to the host by a veth pair, for tests that
//! impair one participant's link: a rate cap (tc tbf), random loss and
//! outages (nftables). The kernel here has no netem, so these stand in for it.
//! [`Link::routed`] makes one with a default route, for Firefox, which
//! gathers no ICE candidates without one.
//!
//! Needs root (CI runs as root) and the `ip`, `tc` and `nft` commands; the
//! test script installs `nftables`. Everything is torn down on drop.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// One impaired link: the host side and a namespace with one address.
pub struct Link {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    host_dev: String,
    ns_dev: String,
    /// The host's address on the link (the server listens here).
    pub host_ip: Ipv4Addr,
    /// The namespace's address.
    pub ns_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Links made by this process get distinct subnets and names.
static NEXT: AtomicU8 = AtomicU8::new(0);

/// The documentation ranges (RFC 5737) a routed link may take a /30 of.
/// This machine's own uplink may be on one of them (192.0.2.0/24 here), so
/// a range the host already has an address or route in is skipped.
const DOC_RANGES: [[u8; 3]; 3] = [[198, 51, 100], [203, 0, 113], [192, 0, 2]];

impl Link {
    /// Creates the namespace, the veth pair and addresses in 10.213.N.0/30.
    pub fn new() -> Result<Link, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 10_000;
        let subnet = (pid % 200) as u8 + n;
        Link::create(
            n,
            Ipv4Addr::new(10, 213, subnet, 1),
            Ipv4Addr::new(10, 213, subnet, 2),
        )
    }

    /// A link whose namespace has a default route over it (Firefox gathers
    /// ICE candidates only then), on a /30 of a documentation range that the
    /// host does not use. Nothing leaves the namespace but for the host's
    /// end of the link: its output to any other address is dropped.
    pub fn routed() -> Result<Link, String> {
        let used = host_ipv4_config()?;
        let range = DOC_RANGES
            .iter()
            .find(|r| !used.contains(&format!("{}.{}.{}.", r[0], r[1], r[2])))
            .ok_or("every documentation range is in use on this host")?;
        // A /30 no other link on this host has (tests of other processes may run).
        let pid = std::process::id();
        let first = (pid % 64) as u8;
        let (host_ip, ns_ip) = (0..64u8)
            .map(|i| (first + i) % 64 * 4)
            .map(|base| {
                (
                    Ipv4Addr::new(range[0], range[1], range[2], base + 1),
                    Ipv4Addr::new(range[0], range[1], range[2], base + 2),
                )
            })
            .find(|(h, _)| !used.contains(&format!(" {h}/")))
            .ok_or("no free /30 in the documentation range")?;
        let link = Link::create(NEXT.fetch_add(1, Ordering::Relaxed), host_ip, ns_ip)?;
        let via = link.host_ip.to_string();
        link.exec(&["ip", "route", "add", "default", "via", &via])?;
        let spec = "{ type filter hook output priority 0; policy drop; }";
        link.exec(&["nft", "add", "chain", "inet", "vela", "confine", spec])?;
        link.exec(&[
            "nft", "add", "rule", "inet", "vela", "confine", "oif", "lo", "accept",
        ])?;
        link.exec(&[
            "nft", "add", "rule", "inet", "vela", "confine", "ip", "daddr", &via, "accept",
        ])?;
        Ok(link)
    }

    fn create(n: u8, host_ip: Ipv4Addr, ns_ip: Ipv4Addr) -> Result<Link, String> {
        let pid = std::process::id() % 10_000;
        let tag = format!("{pid}x{n}");
        let link = Link {
            ns: format!("vela-{tag}"),
            host_dev: format!("vh{tag}"),
            ns_dev: format!("vn{tag}"),
            host_ip,
            ns_ip,
        };
        let host = format!("{}/30", link.host_ip);
        let nsip = format!("{}/30", link.ns_ip);
        run(&["ip", "netns", "add", &link.ns])?;
        run(&[
            "ip",
            "link",
            "add",
            &link.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &link.ns_dev,
        ])?;
        run(&["ip", "link", "set", &link.ns_dev, "netns", &link.ns])?;
        run(&["ip", "addr", "add", &host, "dev", &link.host_dev])?;
        run(&["ip", "link", "set", &link.host_dev, "up"])?;
        link.exec(&["ip", "link", "set", "lo", "up"])?;
        link.exec(&["ip", "addr", "add", &nsip, "dev", &link.ns_dev])?;
        link.exec(&["ip", "link", "set", &link.ns_dev, "up"])?;
        link.exec(&["nft", "add", "table", "inet", "vela"])?;
        for chain in ["in", "out"] {
            let hook = if chain == "in" { "input" } else { "output" };
            let spec = format!("{{ type filter hook {hook} priority 0; }}");
            link.exec(&["nft", "add", "chain", "inet", "vela", chain, &spec])?;
        }
        Ok(link)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(args);
        run(&v)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }

    /// Caps both directions at `kbit` kbit/s (`None` lifts the cap).
    pub fn cap(&self, kbit: Option<u32>) -> Result<(), String> {
        let _ = run(&["tc", "qdisc", "del", "dev", &self.host_dev, "root"]);
        let _ = self.exec(&["tc", "qdisc", "del", "dev", &self.ns_dev, "root"]);
        if let Some(k) = kbit {
            let rate = format!("{k}kbit");
            // A queue of about 200 ms at the capped rate, as a real bottleneck has.
            let burst = format!("{}", (k * 1000 / 8 / 50).max(3000));
            let tbf = [
                "root", "tbf", "rate", &rate, "burst", &burst, "latency", "200ms",
            ];
            let mut a = vec!["tc", "qdisc", "add", "dev", &self.host_dev];
            a.extend_from_slice(&tbf);
            run(&a)?;
            let mut b = vec!["tc", "qdisc", "add", "dev", &self.ns_dev];
            b.extend_from_slice(&tbf);
            self.exec(&b)?;
        }
        Ok(())
    }

    /// Drops `percent`% of UDP datagrams at random in each direction (0 stops it).
    pub fn loss(&self, percent: u32) -> Result<(), String> {
        self.flush()?;
        if percent > 0 {
            let p = percent.to_string();
            for chain in ["in", "out"] {
                self.exec(&[
                    "nft", "add", "rule", "inet", "vela", chain, "meta", "l4proto", "udp",
                    "numgen", "random", "mod", "100", "<", &p, "drop",
                ])?;
            }
        }
        Ok(())
    }

    /// Drops `percent`% of the UDP datagrams crossing the veth pair at
    /// random, each way (0 stops it); traffic inside the namespace (over its
    /// `lo`) is untouched, unlike [`Link::loss`].
    pub fn link_loss(&self, percent: u32) -> Result<(), String> {
        self.flush()?;
        if percent > 0 {
            let p = percent.to_string();
            for (chain, dir) in [("in", "iifname"), ("out", "oifname")] {
                self.exec(&[
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "vela",
                    chain,
                    dir,
                    &self.ns_dev,
                    "meta",
                    "l4proto",
                    "udp",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    &p,
                    "drop",
                ])?;
            }
        }
        Ok(())
    }

    /// Cuts (or restores) all UDP traffic: an outage of the participant's network.
    pub fn outage(&self, down: bool) -> Result<(), String> {
        self.flush()?;
        if down {
            for chain in ["in", "out"] {
                self.exec(&[
                    "nft", "add", "rule", "inet", "vela", chain, "meta", "l4proto", "udp", "drop",
                ])?;
            }
        }
        Ok(())
    }

    /// Drops every UDP datagram in and out of the namespace, as a network
    /// that allows no UDP at all (added to the rules in place; the
    /// impairments above flush it).
    pub fn drop_udp(&self) -> Result<(), String> {
        for chain in ["in", "out"] {
            self.exec(&[
                "nft", "add", "rule", "inet", "vela", chain, "meta", "l4proto", "udp", "drop",
            ])?;
        }
        Ok(())
    }

    /// Drops TCP from the namespace to `port` on any address (a firewall
    /// that lets through only the ports it knows); added like
    /// [`Link::drop_udp`].
    pub fn drop_tcp_to(&self, port: u16) -> Result<(), String> {
        let port = port.to_string();
        self.exec(&[
            "nft", "add", "rule", "inet", "vela", "out", "tcp", "dport", &port, "drop",
        ])
    }

    /// Drops TCP from the namespace to any port but `ports` (a firewall
    /// that lets through the web and little else); added like
    /// [`Link::drop_udp`]. The namespace's own loopback is left alone.
    pub fn allow_only_tcp_to(&self, ports: &[u16]) -> Result<(), String> {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let set = format!("{{ {} }}", list.join(", "));
        self.exec(&[
            "nft", "add", "rule", "inet", "vela", "out", "oifname", "!=", "lo", "tcp", "dport",
            "!=", &set, "drop",
        ])
    }

    fn flush(&self) -> Result<(), String> {
        for chain in ["in", "out"] {
            self.exec(&["nft", "flush", "chain", "inet", "vela", chain])?;
        }
        Ok(())
    }
}

/// The host's IPv4 addresses and routes, as `ip` prints them.
fn host_ipv4_config() -> Result<String, String> {
    let mut text = String::new();
    for args in [["-4", "-o", "addr"], ["-4", "route", "show"]] {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(text)
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_dev]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}
