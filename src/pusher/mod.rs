//! Pusher's HTTP API itself, apart from any request path: request
//! signatures ([`signature`]), the strict query decoding they rest on
//! ([`query`]) and channel names ([`channel`]).

pub mod channel;
pub mod query;
pub mod signature;
