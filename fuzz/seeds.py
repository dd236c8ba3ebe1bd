#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (the Chromium offers in
corpus/offer/ were captured from the browser tests; room_protocol's seeds
embed them). Run from fuzz/: python3 seeds.py. Tokens are signed with the
key and secret of fuzz/src/room_protocol.rs and expire in 2100."""
import base64, hashlib, hmac, json, struct

KEY = "vela-fuzz"
SECRET = "vela-fuzz-secret-that-is-long-enough-for-hs256"


def put(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub, room="fuzz", name=None, **grants):
    video = {"room": room, "roomJoin": True, **grants}
    claims = {"iss": KEY, "sub": sub, "exp": 4102444800, "video": video}
    if name:
        claims["name"] = name
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


TOKENS = {
    "alice": token("alice", name="Alice"),
    "bob": token("bob"),
    "viewer": token("viewer", canPublish=False, canPublishData=False),
    "nosub": token("carol", canSubscribe=False),
    "admin": token("mod", roomAdmin=True),
    "other_room": token("dave", room="other"),
    "call_room": token("erin", room="call-7"),
}


def J(**k):
    return json.dumps(k, separators=(",", ":"))


def sdp(name):
    with open(f"corpus/offer/{name}", newline="") as f:
        return f.read()


def room_protocol():
    page = sdp("chromium-page-audio-video-simulcast-datachannel.sdp")
    whip = sdp("chromium-whip-audio-video.sdp")
    whep = sdp("chromium-whep-recvonly.sdp")
    dc = sdp("chromium-datachannel-only.sdp")
    audio = sdp("chromium-audio-datachannel.sdp")
    restart = sdp("chromium-audio-datachannel-ice-restart.sdp")
    # Trickled candidates as the web page sends them (Chromium's).
    cands = [
        "candidate:3752821448 1 udp 2122194687 127.0.0.1 48812 typ host generation 0 ufrag CaOq network-id 1",
        "candidate:1905401156 1 udp 2122063615 192.0.2.2 38002 typ host generation 0 ufrag CaOq network-id 2",
        "candidate:4072035859 1 udp 2122267903 ::1 36739 typ host generation 0 ufrag CaOq network-id 3",
    ]

    def join(t, **k):
        return J(type="join", token=TOKENS[t], **k)

    def offer(s):
        return J(type="offer", sdp=s)

    seeds = {
        "one-session": [join("alice"), offer(page)]
        + [J(type="candidate", candidate=c, sdp_mid="0") for c in cands]
        + [J(type="ping"), J(type="mute", kind="audio", muted=True), J(type="mute", track_id="TR2", muted=False),
           J(type="track_settings", track_id="TR1", enabled=False), J(type="data", payload="aGVsbG8=", topic="chat"),
           "+1000", J(type="leave")],
        "two-sessions-chromium-offers": ["@0 " + join("alice"), "@0 " + offer(page), "@1 " + join("bob"), "@1 " + offer(page),
            "+200", "@0 !answer", "@1 " + J(type="data", payload="aGk=", destination_identities=["alice"]), "@0 " + J(type="leave"), "+16000"],
        "viewer-and-whep-offer": ["@0 " + join("viewer", name="V"), "@0 " + offer(page), "@1 " + join("bob"), "@1 " + offer(whip),
            "@2 " + join("nosub"), "@2 " + offer(whep), "+100"],
        "refusals": ["@0 " + J(type="ping"), "@1 " + J(type="resume", participant_id="PA1", resume_token="x"),
            "@2 " + join("other_room"), "@3 " + join("call_room", room="call-7"), "@0 " + join("alice")],
        "join-errors": [J(type="join", token="not-a-jwt"), "@1 " + join("alice", room="other"),
            "@2 " + join("alice", take_over="TR1"), "@3 " + join("alice", take_over="PA9", resume_token="resume-PA9")],
        "duplicate-identity": ["@0 " + join("alice"), "@0 " + offer(audio), "@1 " + join("alice"), "@1 " + offer(dc), "@0 " + J(type="ping")],
        "renegotiation": ["@0 " + join("admin"), "@0 " + offer(audio), "+100", "@0 " + offer(restart),
            "@0 " + J(type="candidate", candidate=""), "@0 " + J(type="candidate", candidate="a=end-of-candidates")],
        "data-messages": ["@0 " + join("alice"), "@1 " + join("bob"), "@1 " + offer(dc),
            "@0 " + J(type="data", payload="!!", topic=""), "@0 " + J(type="data", payload="A" * 24000),
            "@1 " + J(type="data", payload=" aGVsbG8= ", topic="t", destination_identities=["alice", "nobody"]),
            "@0 " + J(type="join", token="x"), "@0 " + J(type="mute", muted=True), "@0 " + J(type="mute", track_id="x", muted=True)],
        "malformed": [join("alice"), '{"type":"offer"}', '{"type":"offer","sdp":"v=0"}', '{"type":"unknown"}', "{", "",
            J(type="track_settings", track_id="TR1", enabled=True, width=-1), J(type="answer", sdp="")],
        "browsers-connected": ["@0 " + join("alice"), "@0 !offer asd", "@1 " + join("bob"), "@1 !offer avd", "+300", "@0 !key", "@1 !key",
            "+100", "@0 !answer", "@1 !answer", "+200", "@0 !media", "@1 !media", "+100",
            "@0 " + J(type="track_settings", track_id="TR3", enabled=True, width=160, height=90),
            "@1 " + J(type="mute", kind="video", muted=True), "@1 " + J(type="mute", track_id="TR4", muted=False),
            "@0 " + J(type="track_settings", track_id="TR4", enabled=False), "@1 !key", "+1000", "@0 " + J(type="leave"),
            "+100", "@1 !answer", "+20000"],
        "browser-handover": ["@0 " + join("alice"), "@0 !offer avd", "+300",
            "@1 " + join("alice", take_over="PA1", resume_token="resume-PA1"),
            "@1 !offer avd", "+300", "@1 !key", "@0 !key", "+500", "@0 !media", "@1 !media", "+3000"],
        "take-over-refused": ["@0 " + join("alice"), "@1 " + join("alice", take_over="PA1"),
            "@2 " + join("alice", take_over="PA1", resume_token="resume-PA2"), "@3 " + join("bob", take_over="PA1", resume_token="resume-PA1")],
        "resume": ["@0 " + join("alice"), "@0 !offer avd", "+300", "@1 " + J(type="resume", participant_id="PA1", resume_token="resume-PA1"),
            "@1 " + J(type="ping"), "@0 " + J(type="ping"), "@2 " + J(type="resume", participant_id="PA1", resume_token="wrong"), "@1 " + J(type="leave")],
        "browser-viewer": ["@0 " + join("viewer"), "@0 !offer avd", "@1 " + join("alice"), "@1 !offer sd", "@2 " + join("nosub"),
            "@2 !offer r", "+300", "@0 !answer", "@1 !answer", "@2 !answer", "@1 !key", "+200",
            "@0 " + J(type="data", payload="aGk="), "@1 " + J(type="data", payload="aGk=")],
    }
    # The offer's `sources`: the page's own (screen, screen audio, a
    # microphone claimed for video), then ones the transport refuses.
    many = {str(i): "camera" for i in range(33)}
    seeds["offer-sources"] = ["@0 " + join("alice"), "@0 !offer avdSA", "@1 " + join("bob"), "@1 !offer avX", "+300",
        "@0 !key", "@1 !key", "+100", "@0 !answer", "@1 !answer", "+200", "@0 !media", "+100",
        "@0 " + J(type="offer", sdp=page, sources={"0": "microphone", "1": "screen"}),
        "@1 " + J(type="offer", sdp=page, sources={"1": "webcam"}),
        "@1 " + J(type="offer", sdp=page, sources={"bad mid": "camera"}),
        "@1 " + J(type="offer", sdp=page, sources=many), "+100"]
    for name, lines in seeds.items():
        put("room_protocol", name, "\n".join(lines) + "\n")


def tcp_framing():
    """RFC 4571 streams: a seed byte (the reads' sizes; 0 reads all at
    once), then frames, each a 2-byte length and a datagram."""
    def frame(d):
        return struct.pack(">H", len(d)) + d

    name = b"srv:cli"
    attr = struct.pack(">HH", 0x0006, len(name)) + name + b"\x00" * (-len(name) % 4)
    stun = struct.pack(">HHI", 0x0001, len(attr), 0x2112A442) + b"\x07" * 12 + attr
    rtp = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + bytes(100)
    seeds = {
        "stun-then-media": bytes([0]) + frame(stun) + frame(rtp) * 3,
        "split-reads": bytes([7]) + frame(stun) + frame(rtp) + frame(bytes(1200)) + frame(b"\x01"),
        "partial-tail": bytes([3]) + frame(stun) + frame(rtp)[:40],
        "empty-frame": bytes([5]) + frame(stun) + b"\x00\x00" + frame(rtp),
        "oversize": bytes([1]) + frame(rtp) + b"\xff\xff",
        "largest": bytes([9]) + frame(bytes(4096)) + b"\x10\x01" + bytes(4097),
        "not-stun-first": bytes([0]) + frame(rtp) + frame(stun),
    }
    for name, data in seeds.items():
        put("tcp_framing", name, data)


def device_socket():
    seeds = {
        "auth": J(type="auth", token=TOKENS["alice"]),
        "heartbeat": J(type="heartbeat"),
        "ping": J(type="ping"),
        "set-presence": J(type="set_presence", status="dnd", text="focus time"),
        "set-presence-status": J(type="set_presence", status="away"),
        "set-presence-text": J(type="set_presence", text=""),
        "unknown-type": J(type="subscribe", topic="x"),
        "extra-field": J(type="heartbeat", at=1),
        "not-an-object": '["auth"]',
    }
    for name, text in seeds.items():
        put("device_socket", name, text)


def api_json():
    # The first byte picks the route: A + its index in fuzz::Route::ALL.
    bodies = {
        "contact-create": ("A", {"display_name": "Ann Smith", "phones": [{"label": "mobile", "value": "+44 20 7946 0018"}],
                                 "emails": [{"label": "work", "value": "ann@example.com"}], "groups": ["work"],
                                 "linked_account": 12, "favorite": True, "notes": "met at the conference"}),
        "contact-minimal": ("A", {"display_name": "Bob"}),
        "contact-bad-phone": ("A", {"display_name": "X", "phones": [{"value": "12"}]}),
        "contact-update": ("B", {"version": 3, "display_name": "Ann Smith", "phones": [], "emails": [{"value": "ann@example.org"}],
                                 "groups": ["work", "family"], "favorite": False, "notes": ""}),
        "call-invite": ("C", {"to": [2, 3], "video": True}),
        "call-accept": ("D", {"client_id": "tab-1"}),
        "call-accept-empty": ("D", {}),
        "call-add": ("E", {"to": [4]}),
        "call-message": ("F", {"text": "hello"}),
        "call-settings": ("G", {"dnd": True, "allow": "favorites"}),
        "room-create": ("H", {"name": "demo", "max_participants": 10, "empty_timeout": 600, "metadata": "{\"topic\":\"x\"}"}),
        "room-update-participant": ("I", {"permission": {"can_publish": False, "can_subscribe": True, "can_publish_data": False}}),
        "room-mute": ("J", {"muted": True}),
        "room-data": ("K", {"payload": "aGVsbG8=", "topic": "chat", "destination_identities": ["alice"]}),
        "token": ("L", {"identity": "guest", "room": "demo", "name": "Guest", "ttl_secs": 3600, "can_publish": False,
                        "can_subscribe": True, "can_publish_data": True, "room_admin": False}),
    }
    for name, (route, body) in bodies.items():
        put("api_json", name, route + json.dumps(body))
    put("api_json", "malformed", 'C{"to":[2,')


def config():
    with open("../config/default.toml") as f:
        put("config", "default.toml", f.read())
    with open("../config/examples/production.toml") as f:
        put("config", "example-production.toml", f.read())
    put("config", "file-and-env", '[media]\nudp_port = 9000\n\0VELA_AUTH_API_KEY=key\n'
        'VELA_AUTH_API_SECRET=0123456789abcdef0123456789abcdef\nVELA_MEDIA_NODE_IPS=10.0.0.1, 10.0.0.2\nVELA_LOG=debug\n')
    put("config", "env-bad-port", "\0VELA_MEDIA_UDP_PORT=70000\n")
    put("config", "env-lists", "\0VELA_SERVER_TRUSTED_PROXIES=10.0.0.0/8,192.168.1.1\nVELA_STORE_PATH=/tmp/x.sqlite\n")
    put("config", "webhooks", '[server]\nhttp = "127.0.0.1:7880"\ntrusted_proxies = ["10.0.0.0/8"]\n'
        '[webhooks]\nurls = ["http://127.0.0.1:9/hook"]\n')


def sfu_datagrams():
    # Operations of fuzz/src/sfu_datagrams.rs: an opcode (mod 12) and its bytes.
    u16 = lambda n: struct.pack(">H", n)
    u32 = lambda n: struct.pack(">I", n)

    def raw(op, data, host=None):
        return bytes([op]) + (bytes([host]) if host is not None else b"") + u16(len(data)) + data

    def media(stream, payload, flags=0, seq=None, time=None, level=None, pt=None):
        b = bytes([4, stream, flags])
        if flags & 3 == 2:
            b += bytes([seq])
        elif flags & 3 == 3:
            b += u16(seq)
        b += bytes([10 if time is None else time]) if flags & 4 == 0 else u32(time)
        if flags & 16:
            b += bytes([level])
        if flags & 64:
            b += bytes([pt])
        return b + u16(len(payload)) + payload

    def rtcp(kind, pick=0, extra=b""):
        return bytes([6, kind, pick]) + extra

    def wait(ms):
        return bytes([9, ms // 4]) if ms < 1024 else bytes([10]) + u16(ms)

    def shaped(shape, rest):
        return bytes([3, shape]) + u16(len(rest)) + rest

    def settings(track, flags, w=None, h=None):
        b = bytes([11, track, flags])
        if flags & 2:
            b += u16(w)
        if flags & 4:
            b += u16(h)
        return b

    vp8key = bytes([0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]) + bytes(40)
    vp8delta = bytes([0x10, 0x11, 0x02, 0x00]) + bytes(30)
    opus = bytes([0xFC, 0xFF, 0xFE]) + bytes(20)
    stun = bytes([0, 1, 0, 8, 0x21, 0x12, 0xA4, 0x42]) + bytes(12) + bytes([0, 0x24, 0, 4, 0, 0, 0, 1])
    seeds = {
        "raw-classes": raw(0, stun) + raw(0, bytes([0x16, 0xFE, 0xFD]) + bytes(10) + u16(20) + bytes(20))
        + raw(0, bytes([0x80, 0x6F]) + u16(7) + u32(1000) + u32(0x1234) + bytes(20))
        + raw(0, bytes([0x81, 0xC9, 0, 7]) + u32(0x1234) + bytes(24)) + raw(1, bytes([0x80, 0xCE, 0, 2]) + u32(1) + u32(2))
        + raw(2, bytes([0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]) + bytes(12), host=1),
        "media-audio-video": b"".join([media(0, opus, flags=16, level=30), media(1, vp8key, flags=8), media(2, vp8key, flags=8),
            media(3, vp8key, flags=8), wait(40), media(0, opus, flags=16 | 32, level=10), media(1, vp8delta, flags=8),
            media(3, vp8delta, flags=2 | 8, seq=5), wait(100)]),
        "media-odd": b"".join([media(1, vp8key, flags=1), media(1, bytes([0x90, 0x80, 0x01]) + vp8key, flags=8), media(0, b""),
            media(2, vp8key, flags=3 | 4, seq=0xFFFF, time=0xFFFFFFFF), media(1, vp8key, flags=64, pt=0),
            media(3, bytes([0xFF] * 50), flags=8), wait(20)]),
        "rtcp-feedback": b"".join([media(1, vp8key, flags=8), wait(30), rtcp(0, 0), rtcp(1, 1), rtcp(2, 0, u32(7) + u32(0x1234)),
            rtcp(3, 1, u32(50000)), rtcp(4, 0, u16(8) + b"fuzzfuzz"), wait(600), rtcp(0, 1), wait(50)]),
        "loss-nack": b"".join([bytes([7, 10])] + [media(1 + (i % 3), vp8delta if i else vp8key, flags=8) for i in range(12)]
            + [wait(100)] + [media(1 + (i % 3), vp8delta, flags=8) for i in range(6)] + [wait(1200)]),
        "new-address": b"".join([bytes([8, 1]), wait(200), media(0, opus), media(1, vp8key, flags=8), wait(100), bytes([8, 0x85]),
            wait(300), rtcp(0, 0), wait(50)]),
        "silence": b"".join([media(1, vp8key, flags=8), wait(16000), media(1, vp8key, flags=8), wait(100)]),
        "track-settings": b"".join([settings(2, 1 | 2 | 4, w=160, h=90), media(1, vp8key, flags=8), media(2, vp8key, flags=8),
            media(3, vp8key, flags=8), wait(600), settings(2, 0), wait(600), settings(2, 1), settings(2, 1 | 2 | 4, w=1920, h=1080),
            media(3, vp8key, flags=8), wait(600)]),
        "shaped": b"".join([shaped(0, bytes([0, 0x25, 0, 0]) + bytes([0, 0x08, 0, 20]) + bytes(20)),
            shaped(0x80 | 0x10, bytes([0x80, 0x28, 0, 4]) + bytes(4)), shaped(1, bytes(11) + u16(10) + bytes(10)),
            shaped(2, bytes(40)), shaped(6, bytes(40)), shaped(3, bytes(8) + u32(1)), shaped(0x23, bytes(16)), shaped(0xC3, bytes(12))]),
    }
    for name, data in seeds.items():
        put("sfu_datagrams", name, data)


if __name__ == "__main__":
    room_protocol()
    device_socket()
    api_json()
    config()
    sfu_datagrams()
    tcp_framing()
