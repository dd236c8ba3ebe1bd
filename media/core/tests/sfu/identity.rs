//! The same identity joining a room again replaces its older session; but
//! a signed-in device's session is replaced by that device only, never by
//! a room token whose identity spells the device's (`<username>/<device>`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use common::World;
use vela_media_core::{JoinError, JoinRequest, PeerKind, RoomId};

fn join(w: &mut World, req: JoinRequest) -> Result<vela_media_core::Joined, JoinError> {
    let now = w.now;
    w.sfu.handle_join(now, req)
}

#[test]
fn a_room_token_never_takes_a_devices_place() {
    let mut w = World::new();
    let room = RoomId::new("home").unwrap();
    let device = || JoinRequest::new(room.clone(), "olive/7", PeerKind::Session);
    let first = join(&mut w, device().with_account("3", "7")).unwrap();

    // A room token named like the device: refused, the device stays.
    let e = join(&mut w, device()).err();
    assert!(matches!(e, Some(JoinError::NotPermitted(_))), "{e:?}");
    // Another account's device of that name cannot exist, but would be refused too.
    let e = join(&mut w, device().with_account("4", "7")).err();
    assert!(matches!(e, Some(JoinError::NotPermitted(_))), "{e:?}");
    let ps = w.sfu.participants(&room);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].id, first.participant.id);

    // The device itself joining again replaces its older session.
    let again = join(&mut w, device().with_account("3", "7")).unwrap();
    assert_eq!(again.replaced, Some(first.connection));

    // A room token's participant is replaced by the same identity, as
    // before, and by the device whose name it took.
    let room2 = RoomId::new("lobby").unwrap();
    let token = || JoinRequest::new(room2.clone(), "olive/7", PeerKind::Session);
    let squatter = join(&mut w, token()).unwrap();
    let second = join(&mut w, token()).unwrap();
    assert_eq!(second.replaced, Some(squatter.connection));
    let owner = join(&mut w, token().with_account("3", "7")).unwrap();
    assert_eq!(owner.replaced, Some(second.connection));
}
