//! TLS on a core: admitting connections whose handshake the handshake
//! threads completed (`../tls.rs`), and the record layer in user space.
//!
//! io_uring keeps receiving and sending plain byte buffers: a received
//! buffer of ciphertext is decrypted into the connection's `inbuf` and the
//! session layer reads it from there (the plaintext fast path that decodes
//! straight from the kernel's buffer is not available: the plaintext has
//! to be written somewhere); the output a loop iteration coalesced is
//! sealed into records as a whole when the send starts, so one send still
//! carries a whole batch of reports.
//!
//! Memory: the scratch buffer for outgoing plaintext is swapped with the
//! send buffer, so both are reused; rustls holds its records in its own
//! buffers (one allocation per record of up to 16 KiB, not per order).

use std::io::{self, Read as _, Write as _};

use rustls::ServerConnection;

use super::Core;
use super::session::Phase;
use crate::book::Matcher;
use crate::server::durable::Snapshot;

/// A connection's TLS session, after the handshake.
pub struct ConnTls {
    session: ServerConnection,
    /// Outgoing plaintext, swapped with the send buffer (see [`ConnTls::seal`]).
    plain: Vec<u8>,
}

/// What a batch of received ciphertext gave.
pub enum Opened {
    /// Plaintext (possibly none yet) appended to the input.
    Data,
    /// The client sent close_notify.
    Closed,
}

impl ConnTls {
    pub fn new(mut session: ServerConnection, capacity: usize) -> ConnTls {
        session.set_buffer_limit(None);
        ConnTls {
            session,
            plain: Vec::with_capacity(capacity),
        }
    }

    /// Decrypts `data` (ciphertext, any split) and appends the plaintext
    /// to `input`. An error is the client's (a bad record, a bad MAC):
    /// the connection must close.
    pub fn open(&mut self, mut data: &[u8], input: &mut Vec<u8>) -> Result<Opened, rustls::Error> {
        loop {
            let state = self.session.process_new_packets()?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let old = input.len();
                input.resize(old + n, 0);
                // rustls said how many bytes it holds: this reads them all.
                let got = self.session.reader().read(&mut input[old..]).unwrap_or(0);
                input.truncate(old + got);
            }
            if state.peer_has_closed() && data.is_empty() {
                return Ok(Opened::Closed);
            }
            if data.is_empty() {
                return Ok(Opened::Data);
            }
            // Reading from a slice cannot fail; rustls takes at most one
            // buffer's worth per call, so loop until it took everything.
            match self.session.read_tls(&mut data) {
                Ok(_) => {}
                Err(e) => {
                    return Err(rustls::Error::General(format!(
                        "cannot take the received bytes: {e}"
                    )));
                }
            }
        }
    }

    /// Replaces the plaintext in `sending` by its TLS records.
    pub fn seal(&mut self, sending: &mut Vec<u8>) -> io::Result<()> {
        std::mem::swap(&mut self.plain, sending);
        sending.clear();
        let written = self.session.writer().write_all(&self.plain);
        self.plain.clear();
        written?;
        while self.session.wants_write() {
            self.session.write_tls(sending)?;
        }
        Ok(())
    }
}

impl<M: Matcher + Snapshot> Core<M> {
    /// Admits the connections whose handshakes completed since last time.
    pub(super) fn adopt_handshaken(&mut self) {
        let capacity = super::super::limits::CONN_BUFFER_BYTES;
        loop {
            let Some(tls) = &self.tls else { return };
            let Ok(h) = tls.done.try_recv() else { return };
            if self.st.draining {
                self.st
                    .shared
                    .conns_live
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let conn_tls = Box::new(ConnTls::new(h.session, capacity));
            let Some(slot) = self.admit(h.stream, Some(conn_tls)) else {
                continue;
            };
            // The client may have sent its first frames with the end of
            // its handshake: rustls already holds them.
            self.recv_tls(slot, None);
        }
    }

    /// Decrypts a received buffer (`bid`, `len` of the buffer ring; it is
    /// recycled here) of a TLS connection, then runs the session layer
    /// over the plaintext.
    pub(super) fn recv_tls(&mut self, slot: u32, buffer: Option<(u16, usize)>) {
        let core = self.st.cfg.index;
        let data = buffer.map_or(&[][..], |(bid, len)| self.bufring.data(bid, len));
        let opened = match self.st.router.conns.slot_mut(slot) {
            Some(c) if c.phase() != Phase::Closing => {
                c.tls.as_mut().map(|tls| tls.open(data, &mut c.inbuf))
            }
            _ => None,
        };
        if let Some((bid, _)) = buffer {
            self.bufring.recycle(bid);
        }
        let (Some(opened), Some(c)) = (opened, self.st.router.conns.slot_mut(slot)) else {
            return;
        };
        let blocked = c.blocked;
        match opened {
            Ok(Opened::Data) => {
                if !blocked {
                    self.process_inbuf(slot);
                }
            }
            Ok(Opened::Closed) => {
                if !blocked {
                    self.process_inbuf(slot);
                }
                self.begin_close(slot, None);
            }
            Err(e) => {
                let who = c.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
                tracing::warn!("core {core}: TLS error from {who}: {e}; closing the connection");
                self.begin_close(slot, None);
            }
        }
    }
}
