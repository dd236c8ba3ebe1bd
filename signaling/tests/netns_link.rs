//! The impaired-link harness itself: a namespace reaches the host over its
//! veth; loss and outages drop what they should.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod netns;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use netns::Link;

/// Sends `n` datagrams from inside the namespace to `port` on the host side.
fn send_from_ns(link: &Link, port: u16, n: u32) {
    // A tiny sender inside the namespace: bash's /dev/udp needs no extra tools.
    let script = format!(
        "for i in $(seq 1 {n}); do echo -n x 2>/dev/null > /dev/udp/{}/{port} || true; done",
        link.host_ip
    );
    let mut cmd: Vec<String> = link.prefix();
    cmd.extend(["bash".into(), "-c".into(), script]);
    let st = Command::new(&cmd[0]).args(&cmd[1..]).status().unwrap();
    assert!(st.success());
}

fn count(sock: &UdpSocket) -> u32 {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn loss_and_outage_drop_what_they_should() {
    let link = Link::new().expect("network namespaces need root, ip, tc and nft");
    let sock = UdpSocket::bind((link.host_ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();

    send_from_ns(&link, port, 200);
    assert_eq!(count(&sock), 200, "a clean link loses nothing");

    link.loss(30).unwrap();
    send_from_ns(&link, port, 400);
    let got = count(&sock);
    assert!(
        (180..=340).contains(&got),
        "about 30% lost: got {got} of 400"
    );

    link.outage(true).unwrap();
    send_from_ns(&link, port, 50);
    assert_eq!(count(&sock), 0, "an outage drops everything");
    link.outage(false).unwrap();
    send_from_ns(&link, port, 50);
    assert_eq!(count(&sock), 50);

    link.cap(Some(300)).unwrap();
    link.cap(None).unwrap();
}
