//! The JSON bodies of the contacts, calls and room-service routes, through
//! the API's own parser (`api::parse`, which names the field at fault) into
//! each route's body type, and an address book entry's `validate`.
//!
//! Input: the first byte picks the route (`A` + its index in
//! [`Route::ALL`], modulo the number of routes), the rest is the body.

use vela_signaling::fuzz::{Route, api_body};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let route = Route::ALL[usize::from(first.wrapping_sub(b'A')) % Route::ALL.len()];
    if let Err(e) = api_body(route, body) {
        // A body is refused with 400 and a reason, never anything else.
        assert_eq!(e.status.as_u16(), 400, "{route:?}: {e:?}");
        assert!(!e.message.is_empty());
        // A named field is a real path, and the message starts with it.
        if let Some(field) = &e.field {
            let named = !field.is_empty() && !field.ends_with('.') && !field.contains("..");
            assert!(named, "{route:?}: {e:?}");
            assert!(
                e.message.starts_with(&format!("{field}: ")),
                "{route:?}: {e:?}"
            );
        }
    }
}
