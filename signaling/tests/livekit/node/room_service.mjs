// LiveKit's Node server SDK (livekit-server-sdk: Twirp with JSON bodies)
// against vela's RoomService. Run by signaling/tests/livekit_api.rs once it
// has joined alice (publishing audio and video) and bob (receiving) to ROOM
// through vela's room protocol; the Rust side checks what they were told.
// Prints "muted <track sid>" and, when every check passed, "done"; any
// failed check throws (exit status 1). Every call has the SDK's timeout.

import assert from 'node:assert/strict';
import {
  DataPacket_Kind,
  RoomServiceClient,
  TrackType,
  TwirpError,
} from 'livekit-server-sdk';

const { VELA_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, ROOM } = process.env;
const OTHER = `${ROOM}-other`;
const rooms = new RoomServiceClient(VELA_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, {
  requestTimeout: 10,
});

/** Awaits `call`, which must fail with the Twirp error `code` and `status`. */
async function refused(call, code, status, what) {
  try {
    await call;
  } catch (e) {
    assert.ok(e instanceof TwirpError, `${what}: ${e}`);
    assert.equal(e.code, code, `${what}: ${e.message}`);
    assert.equal(e.status, status, `${what}: ${e.message}`);
    return e;
  }
  assert.fail(`${what}: ${code} expected, the call succeeded`);
}

// CreateRoom, ListRooms.
const created = await rooms.createRoom({
  name: OTHER,
  emptyTimeout: 60,
  maxParticipants: 4,
  metadata: 'n1',
});
assert.equal(created.name, OTHER);
assert.equal(created.sid, `RM_${OTHER}`);
assert.deepEqual(
  [created.emptyTimeout, created.maxParticipants, created.metadata],
  [60, 4, 'n1'],
);
assert.ok(created.creationTime > 0n, `creationTime: ${created.creationTime}`);
const names = (await rooms.listRooms()).map((r) => r.name).sort();
assert.deepEqual(names, [ROOM, OTHER].sort());
const [room] = await rooms.listRooms([ROOM]);
assert.equal(room.numParticipants, 2);
assert.equal(room.numPublishers, 1);

// ListParticipants, GetParticipant.
const people = await rooms.listParticipants(ROOM);
const alice = people.find((p) => p.identity === 'alice');
const bob = people.find((p) => p.identity === 'bob');
assert.ok(alice && bob && people.length === 2, JSON.stringify(people));
assert.ok(alice.sid.startsWith('PA_'), alice.sid);
assert.deepEqual(alice.tracks.map((t) => t.type).sort(), [TrackType.AUDIO, TrackType.VIDEO]);
assert.ok(alice.isPublisher && !bob.isPublisher);
assert.ok(alice.permission.canPublish && bob.permission.canSubscribe);
const got = await rooms.getParticipant(ROOM, 'alice');
assert.equal(got.sid, alice.sid);
await refused(rooms.getParticipant(ROOM, 'nobody'), 'not_found', 404, 'GetParticipant nobody');

// MutePublishedTrack: alice's video.
const video = alice.tracks.find((t) => t.type === TrackType.VIDEO);
const muted = await rooms.mutePublishedTrack(ROOM, 'alice', video.sid, true);
assert.equal(muted.sid, video.sid);
assert.equal(muted.muted, true);
const after = await rooms.getParticipant(ROOM, 'alice');
assert.equal(after.tracks.find((t) => t.sid === video.sid).muted, true);
console.log(`muted ${video.sid}`);

// UpdateParticipant: bob's permission; metadata is refused.
const updated = await rooms.updateParticipant(ROOM, 'bob', {
  permission: { canSubscribe: false, canPublish: false, canPublishData: true },
});
assert.deepEqual(
  [updated.permission.canSubscribe, updated.permission.canPublish, updated.permission.canPublishData],
  [false, false, true],
);
const e = await refused(
  rooms.updateParticipant(ROOM, 'bob', { metadata: 'vip' }),
  'unimplemented',
  501,
  'UpdateParticipant metadata',
);
assert.equal(e.metadata?.field, 'metadata');
await refused(
  rooms.updateSubscriptions(ROOM, 'bob', [video.sid], false),
  'unimplemented',
  501,
  'UpdateSubscriptions',
);

// SendData to alice.
await rooms.sendData(ROOM, new TextEncoder().encode('hello from node'), DataPacket_Kind.RELIABLE, {
  destinationIdentities: ['alice'],
  topic: 'node',
});

// RemoveParticipant, DeleteRoom.
await rooms.removeParticipant(ROOM, 'bob');
const left = await rooms.listParticipants(ROOM);
assert.deepEqual(left.map((p) => p.identity), ['alice']);
await rooms.deleteRoom(ROOM);
await rooms.deleteRoom(OTHER);
assert.deepEqual(await rooms.listRooms(), []);
await refused(rooms.deleteRoom(ROOM), 'not_found', 404, 'DeleteRoom again');
console.log('done');
