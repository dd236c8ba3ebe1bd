"""LiveKit's own server SDK (livekit-api) against vela's Twirp RoomService.

Run by signaling/tests/livekit_api.rs, which starts vela and joins two
participants through vela's room protocol when told to. Talks to it over
stdin/stdout, one line each way per step:

  out: "token <identity> <jwt>"  a join token minted by the SDK's AccessToken
  out: "created"            the rooms exist: join alice (publishing) and bob
                            (receiving) with those tokens
  in:  "joined"             both are in room ROOM with their media connected
  out: "muted <track sid>"  alice's video track was muted (vela's id after it)
  out: "done"               every check passed

Every call's effect is checked here through the API; what the participants
were told is checked by the Rust side. Webhooks: vela posts them to a receiver
this script runs on WEBHOOK_PORT, and each is checked with the SDK's own
WebhookReceiver. Any failed check raises (exit status 1). Every wait is
bounded.
"""

import asyncio
import json
import os
import sys
import time

import aiohttp
from aiohttp import web
from livekit import api

URL = os.environ["VELA_URL"]
KEY = os.environ["LIVEKIT_API_KEY"]
SECRET = os.environ["LIVEKIT_API_SECRET"]
ROOM = os.environ["ROOM"]
OTHER = ROOM + "-other"
WEBHOOK_PORT = int(os.environ["WEBHOOK_PORT"])


def say(line):
    print(line, flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def expect_error(call, code, what):
    """Awaits `call`, which must fail with the Twirp error `code`."""
    try:
        await call
    except api.TwirpError as e:
        check(e.code == code, f"{what}: {code} expected, got {e.code} ({e.message})")
        return e
    raise AssertionError(f"{what}: {code} expected, the call succeeded")


async def eventually(what, probe, timeout=15.0):
    """Polls `probe` (async, returns a truthy value when done) until `timeout`."""
    end = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class Hooks:
    """The webhook receiver: every delivery checked with LiveKit's WebhookReceiver."""

    def __init__(self):
        self.receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
        self.events = []
        self.bad = []

    async def handle(self, request):
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        try:
            event = self.receiver.receive(body, auth)
        except Exception as e:  # Whatever the SDK refuses is a failure here.
            self.bad.append(f"{e}: {body}")
            return web.Response(status=400)
        self.events.append((event, body, auth))
        return web.Response(text="ok")

    def seen(self, kind, room=ROOM, identity=None):
        return [
            e
            for e, _, _ in self.events
            if e.event == kind
            and e.room.name == room
            and (identity is None or e.participant.identity == identity)
        ]


async def read_line(reader, timeout=60.0):
    line = await asyncio.wait_for(reader.readline(), timeout)
    return line.decode().strip()


async def main():
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", WEBHOOK_PORT).start()

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    lk = api.LiveKitAPI(URL, KEY, SECRET, timeout=aiohttp.ClientTimeout(total=10))
    room = lk.room
    try:
        # CreateRoom: the options vela has come back as given.
        r = await room.create_room(
            api.CreateRoomRequest(name=ROOM, empty_timeout=600, max_participants=5, metadata="m1")
        )
        check(r.name == ROOM, f"CreateRoom: {r}")
        check((r.empty_timeout, r.max_participants, r.metadata) == (600, 5, "m1"), f"CreateRoom: {r}")
        check(r.num_participants == 0 and r.creation_time > 0, f"CreateRoom: {r}")
        other = await room.create_room(api.CreateRoomRequest(name=OTHER))
        check(other.empty_timeout == 300, f"the default empty timeout: {other}")
        # An existing room is returned as it is (its options kept).
        again = await room.create_room(api.CreateRoomRequest(name=ROOM, max_participants=9))
        check(again.max_participants == 5, f"CreateRoom again: {again}")
        # An option vela does not have is refused, not ignored.
        await expect_error(
            room.create_room(api.CreateRoomRequest(name="nope", departure_timeout=5)),
            "unimplemented",
            "CreateRoom with departure_timeout",
        )

        # ListRooms: all, and by name.
        listed = await room.list_rooms(api.ListRoomsRequest())
        names = sorted(x.name for x in listed.rooms)
        check(names == sorted([ROOM, OTHER]), f"ListRooms: {names}")
        one = await room.list_rooms(api.ListRoomsRequest(names=[ROOM]))
        check([x.name for x in one.rooms] == [ROOM], f"ListRooms by name: {one}")
        check(one.rooms[0].metadata == "m1", f"ListRooms by name: {one}")
        none = await room.list_rooms(api.ListRoomsRequest(names=["absent"]))
        check(len(none.rooms) == 0, f"ListRooms of an absent room: {none}")

        # Join tokens as LiveKit apps mint them; the Rust side joins with them.
        grants = {
            "alice": api.VideoGrants(room_join=True, room=ROOM),
            "bob": api.VideoGrants(room_join=True, room=ROOM, can_publish=False),
        }
        for identity, grant in grants.items():
            t = (
                api.AccessToken(KEY, SECRET)
                .with_identity(identity)
                .with_name(identity.capitalize())
                .with_grants(grant)
            )
            say(f"token {identity} {t.to_jwt()}")
        say("created")
        check(await read_line(stdin) == "joined", "the participants joined")

        # ListParticipants: alice publishes audio and video, bob receives.
        async def both_there():
            ps = await room.list_participants(api.ListParticipantsRequest(room=ROOM))
            by = {p.identity: p for p in ps.participants}
            if set(by) == {"alice", "bob"} and len(by["alice"].tracks) == 2:
                return by
            return None

        by = await eventually("alice and bob with alice's two tracks", both_there)
        alice, bob = by["alice"], by["bob"]
        check(alice.sid.startswith("PA_") and bob.sid.startswith("PA_"), f"sids: {alice.sid} {bob.sid}")
        check(alice.sid != bob.sid, "two sids")
        check(alice.state == api.ParticipantInfo.State.ACTIVE, f"alice's state: {alice.state}")
        check(alice.is_publisher and not bob.is_publisher, "alice publishes, bob does not")
        kinds = sorted(t.type for t in alice.tracks)
        check(kinds == [api.TrackType.AUDIO, api.TrackType.VIDEO], f"alice's tracks: {alice.tracks}")
        check(all(t.sid.startswith("TR_") and not t.muted for t in alice.tracks), f"{alice.tracks}")
        check(alice.permission.can_publish and alice.permission.can_subscribe, f"{alice.permission}")
        # The SDK's tokens: their name and grants hold.
        check((alice.name, bob.name) == ("Alice", "Bob"), f"names: {alice.name} {bob.name}")
        check(not bob.permission.can_publish and bob.permission.can_subscribe, f"{bob.permission}")
        rooms_now = await room.list_rooms(api.ListRoomsRequest(names=[ROOM]))
        check(rooms_now.rooms[0].num_participants == 2, f"{rooms_now}")
        check(rooms_now.rooms[0].num_publishers == 1, f"{rooms_now}")

        # GetParticipant.
        got = await room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="alice"))
        check(got.sid == alice.sid and got.identity == "alice", f"GetParticipant: {got}")
        await expect_error(
            room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="nobody")),
            "not_found",
            "GetParticipant of nobody",
        )
        await expect_error(
            room.list_participants(api.ListParticipantsRequest(room="absent")),
            "not_found",
            "ListParticipants of an absent room",
        )

        # MutePublishedTrack: alice's video.
        video = next(t for t in alice.tracks if t.type == api.TrackType.VIDEO)
        muted = await room.mute_published_track(
            api.MuteRoomTrackRequest(room=ROOM, identity="alice", track_sid=video.sid, muted=True)
        )
        check(muted.track.sid == video.sid and muted.track.muted, f"MutePublishedTrack: {muted}")
        got = await room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="alice"))
        states = {t.sid: t.muted for t in got.tracks}
        check(states[video.sid] and not any(m for s, m in states.items() if s != video.sid), f"{states}")
        await expect_error(
            room.mute_published_track(
                api.MuteRoomTrackRequest(room=ROOM, identity="alice", track_sid="TR_999999", muted=True)
            ),
            "not_found",
            "MutePublishedTrack of an unknown track",
        )
        say(f"muted {video.sid}")

        # UpdateParticipant: bob's permission (it replaces the whole of it).
        upd = await room.update_participant(
            api.UpdateParticipantRequest(
                room=ROOM,
                identity="bob",
                permission=api.ParticipantPermission(
                    can_subscribe=False, can_publish=True, can_publish_data=False
                ),
            )
        )
        check(
            (upd.permission.can_subscribe, upd.permission.can_publish, upd.permission.can_publish_data)
            == (False, True, False),
            f"UpdateParticipant: {upd.permission}",
        )
        got = await room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))
        check(not got.permission.can_subscribe and not got.permission.can_publish_data, f"{got.permission}")
        # What vela cannot change is refused, and nothing changes.
        e = await expect_error(
            room.update_participant(
                api.UpdateParticipantRequest(
                    room=ROOM,
                    identity="bob",
                    metadata="vip",
                    permission=api.ParticipantPermission(can_subscribe=True, can_publish=True),
                )
            ),
            "unimplemented",
            "UpdateParticipant with metadata",
        )
        check(e.status == 501 and "metadata" in e.message, f"{e}")
        got = await room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))
        check(not got.permission.can_subscribe and got.metadata == "", f"unchanged: {got}")

        # UpdateSubscriptions: vela has no per-track subscriptions to change.
        await expect_error(
            room.update_subscriptions(
                api.UpdateSubscriptionsRequest(
                    room=ROOM, identity="bob", track_sids=[video.sid], subscribe=False
                )
            ),
            "unimplemented",
            "UpdateSubscriptions",
        )

        # SendData to alice (the Rust side checks she got it).
        await room.send_data(
            api.SendDataRequest(
                room=ROOM,
                data=b"hello from livekit-api",
                kind=api.DataPacket.Kind.RELIABLE,
                destination_identities=["alice"],
                topic="greeting",
            )
        )

        # RemoveParticipant: bob.
        await room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))

        async def bob_gone():
            ps = await room.list_participants(api.ListParticipantsRequest(room=ROOM))
            ids = [p.identity for p in ps.participants]
            return ids == ["alice"]

        await eventually("bob gone from the room", bob_gone)
        await expect_error(
            room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob")),
            "not_found",
            "GetParticipant of bob after his removal",
        )

        # DeleteRoom: alice leaves with it; the room is gone from the list.
        await room.delete_room(api.DeleteRoomRequest(room=ROOM))
        await room.delete_room(api.DeleteRoomRequest(room=OTHER))

        async def rooms_gone():
            return len((await room.list_rooms(api.ListRoomsRequest())).rooms) == 0

        await eventually("no room left", rooms_gone)
        await expect_error(
            room.delete_room(api.DeleteRoomRequest(room=ROOM)), "not_found", "DeleteRoom again"
        )

        # A token without the grants gets permission_denied; none at all, unauthenticated.
        plain = api.AccessToken(KEY, SECRET).with_identity("x").with_grants(
            api.VideoGrants(room_join=True, room=ROOM)
        )
        weak = api.LiveKitAPI(URL, token=plain.to_jwt())
        try:
            e = await expect_error(
                weak.room.list_rooms(api.ListRoomsRequest()), "permission_denied", "ListRooms as a participant"
            )
            check(e.status == 403, f"{e}")
        finally:
            await weak.aclose()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{URL}/twirp/livekit.RoomService/ListRooms",
                data=b"{}",
                headers={"Content-Type": "application/json"},
            ) as resp:
                body = await resp.json()
                check(resp.status == 401 and body["code"] == "unauthenticated", f"{resp.status} {body}")

        # Webhooks, each accepted by LiveKit's WebhookReceiver above.
        def all_hooks():
            want = [
                ("room_started", ROOM, None),
                ("participant_joined", ROOM, "alice"),
                ("participant_joined", ROOM, "bob"),
                ("track_published", ROOM, "alice"),
                ("participant_left", ROOM, "bob"),
                ("participant_left", ROOM, "alice"),
                ("room_finished", ROOM, None),
                ("room_finished", OTHER, None),
            ]
            return all(hooks.seen(k, r, i) for k, r, i in want)

        async def hooks_in():
            return all_hooks()

        try:
            await eventually("the room's webhooks", hooks_in, timeout=20.0)
        except AssertionError:
            kinds = [(e.event, e.room.name, e.participant.identity) for e, _, _ in hooks.events]
            raise AssertionError(f"webhooks: got {kinds}, refused {hooks.bad}")
        check(not hooks.bad, f"webhooks the receiver refused: {hooks.bad}")
        # The events name things as the RoomService does (sids, track types).
        joined = hooks.seen("participant_joined", ROOM, "alice")[0]
        check(joined.participant.sid == alice.sid, f"alice's sid in a webhook: {joined.participant}")
        check(joined.room.sid == rooms_now.rooms[0].sid, f"the room's sid: {joined.room}")
        tracks = hooks.seen("track_published", ROOM, "alice")
        published = sorted((e.track.sid, e.track.type) for e in tracks)
        check(published == sorted((t.sid, t.type) for t in alice.tracks), f"alice's tracks: {published}")
        # The receiver checks the body's hash: a changed body is refused.
        event, body, auth = hooks.events[0]
        forged = body.replace(event.id, event.id + "x")
        check(forged != body, "the body names its id")
        try:
            hooks.receiver.receive(forged, auth)
            accepted = True
        except Exception:
            accepted = False
        check(not accepted, "a changed webhook body was accepted")
        say(json.dumps({"webhooks": len(hooks.events)}))
        say("done")
    finally:
        await lk.aclose()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 120))
