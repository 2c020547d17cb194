//! turbo-dex: the matching core ([`book`], no I/O), the symbol directory
//! option ([`config`]) and the server runtime ([`server`]).

pub mod accounts;
pub mod book;
pub mod cluster;
pub mod config;
pub mod exit;
pub mod journal;
pub mod mdbridge;
pub mod server;
pub mod session_id;
