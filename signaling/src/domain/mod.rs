//! The domain: accounts, devices, contacts and links, the presence rules and
//! the call state machine. Plain types and pure functions: no I/O, no
//! tasks, nothing of HTTP; time is an input. Everything above builds on it.

pub mod account;
pub mod call;
pub mod contact;
pub mod device;
pub mod ids;
pub mod link;
pub mod presence;
