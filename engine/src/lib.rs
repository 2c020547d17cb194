//! turbo-dex: the matching core ([`book`], no I/O) and the server runtime.

pub mod book;
