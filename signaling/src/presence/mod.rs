//! Presence: the sans-IO aggregator ([`tracker`]) and the task that drives
//! it, persists last-seen times and pushes changes ([`service`]).

pub mod service;
pub mod tracker;

pub use service::{Presence, PresenceHandle};
pub use tracker::{DeviceStatus, Status};
