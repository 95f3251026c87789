//! Pusher's HTTP API itself, apart from any request path: request
//! signatures ([`signature`]), the strict query decoding they rest on
//! ([`query`]), channel names ([`channel`]) and the routes the proxy tells
//! apart ([`route`]).

pub mod channel;
pub mod query;
pub mod route;
pub mod signature;
