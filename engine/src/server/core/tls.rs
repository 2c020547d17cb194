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
        self.charge_input(slot);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    use super::*;

    /// A client and a server session after an in-memory handshake.
    fn pair() -> (ClientConnection, ConnTls) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        while client.is_handshaking() || server.is_handshaking() || client.wants_write() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        (client, ConnTls::new(server, 1024))
    }

    #[test]
    fn ciphertext_split_anywhere_opens_to_the_same_bytes() {
        let (mut client, mut server) = pair();
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        client.writer().write_all(&sent).unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut input = Vec::new();
        // Odd-sized pieces: records split across receive buffers.
        for piece in wire.chunks(997) {
            assert!(matches!(server.open(piece, &mut input), Ok(Opened::Data)));
        }
        assert!(input == sent, "the opened bytes are the sent bytes");
    }

    #[test]
    fn a_sealed_batch_reads_back_and_garbage_is_an_error() {
        let (mut client, mut server) = pair();
        let mut sending = b"reports".repeat(5_000);
        server.seal(&mut sending).unwrap();
        let mut got = Vec::new();
        let mut wire = &sending[..];
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            let state = client.process_new_packets().unwrap();
            let at = got.len();
            got.resize(at + state.plaintext_bytes_to_read(), 0);
            client.reader().read_exact(&mut got[at..]).unwrap();
        }
        assert!(
            got == b"reports".repeat(5_000),
            "the sealed bytes read back"
        );

        let mut input = Vec::new();
        let garbage = [23u8, 3, 3, 0, 40].iter().copied().chain([0xAB; 40]);
        let garbage: Vec<u8> = garbage.collect();
        assert!(server.open(&garbage, &mut input).is_err());
        assert!(input.is_empty());
    }

    #[test]
    fn close_notify_is_seen() {
        let (mut client, mut server) = pair();
        client.send_close_notify();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut input = Vec::new();
        assert!(matches!(server.open(&wire, &mut input), Ok(Opened::Closed)));
    }
}
