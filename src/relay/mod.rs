//! The relay's rules, pure: what peers send and receive, who may send to whom, the bounds a peer
//! runs into. Nothing here touches a socket; everything is unit-tested without one.

pub mod admission;
pub mod directory;
pub(crate) mod hub;
pub mod ice;
pub mod ids;
pub(crate) mod limits;
pub(crate) mod link;
pub(crate) mod link_wire;
pub(crate) mod outbox;
pub(crate) mod outcome;
pub mod protocol;
pub mod resume;
pub mod schema;
pub mod upgrade;
