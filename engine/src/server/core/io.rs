//! Connection I/O of a core: accepts, receives into the session layer,
//! sends, backpressure, closing, and the per-connection timers.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::Ordering;

use io_uring::cqueue;
use wire::{FrameBuf, ServerHeartbeat, SessionError, SessionErrorCode};

use super::super::auth::Outcome;
use super::super::limits::{CLOSE_FLUSH_NS, CONN_BUFFER_BYTES};
use super::super::realtime_ns;
use super::Core;
use super::conn::Conn;
use super::ops::accepted_socket;
use super::route::{CoreEffects, too_many_sessions};
use super::session::{Clock, CloseReason, InputEnd, Phase, Session, SessionLayer, Timer};
use crate::book::Matcher;
use crate::server::durable::Snapshot;
use crate::session_id::SessionId;

impl<M: Matcher + Snapshot> Core<M> {
    pub(super) fn arm_accept(&mut self) {
        if let Some(l) = &self.listener
            && !self.accept_armed
        {
            self.ops.accept(std::os::fd::AsRawFd::as_raw_fd(l));
            self.accept_armed = true;
        }
    }

    pub(super) fn arm_wake(&mut self) {
        if !self.wake_armed {
            self.ops
                .read_wake(self.st.shared.wake_fds[self.st.cfg.index].raw());
            self.wake_armed = true;
        }
    }

    pub(super) fn arm_recv(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.recv_armed || c.blocked || c.phase() == Phase::Closing || c.shut_down {
            return;
        }
        c.recv_armed = true;
        self.ops.recv(c, slot, &self.bufring);
    }

    fn cancel_recv(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if !c.recv_armed || c.cancel_inflight {
            return;
        }
        c.cancel_inflight = true;
        self.ops.cancel_recv(slot, c.generation);
    }

    fn start_send(&mut self, slot: u32) {
        let chunk = self.st.cfg.send_chunk_bytes;
        let now = self.st.now_ns;
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.send_inflight || c.shut_down {
            return;
        }
        if c.send_pos >= c.sending.len() {
            if c.out.is_empty() {
                return;
            }
            c.out.swap_out(&mut c.sending);
            c.send_pos = 0;
            // TLS (core/tls.rs): the plaintext becomes records in place.
            if let Some(tls) = &mut c.tls
                && let Err(e) = tls.seal(&mut c.sending)
            {
                c.sending.clear();
                tracing::warn!("core {}: TLS: cannot encrypt: {e}", self.st.cfg.index);
                self.begin_close(slot, None);
                return;
            }
        }
        c.send_started_ns = now;
        c.last_out_ns = now;
        self.ops.send(c, slot, chunk);
    }

    /// Starts closing a connection: stop reading, cancel on disconnect,
    /// and queue the SessionError; `finish_closes` frees it once flushed.
    /// The SessionError goes after the answers to every request the
    /// session sent before (it waits for them when they are in flight).
    pub(super) fn begin_close(&mut self, slot: u32, reason: Option<CloseReason>) {
        let now = self.st.now_ns;
        let core = self.st.cfg.index;
        if self
            .st
            .router
            .conns
            .slot_mut(slot)
            .is_some_and(|c| c.in_flight > 0)
        {
            // Without a journal, local commands are answered on the spot.
            self.st.apply_pending();
        }
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        if c.phase() == Phase::Closing {
            return;
        }
        let was_active = c.phase() == Phase::Active;
        let Session {
            id,
            account,
            cancel_on_disconnect,
            ..
        } = c.session;
        c.session.phase = Phase::Closing;
        c.closing_since_ns = now;
        // Its input memory goes back to the core's budget now.
        c.inbuf = Vec::new();
        self.st.input_bytes = self.st.input_bytes.saturating_sub(c.inbuf_charged);
        c.inbuf_charged = 0;
        c.frame_started_ns = None;
        if c.session_counted {
            c.session_counted = false;
            self.st.shared.admission.release_session(account);
        }
        self.st
            .router
            .counters
            .closed(reason.as_ref().map_or(0, |r| r.msg.code.get()));
        if let Some(r) = &reason {
            if r.log {
                let who = c.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
                let code = r.code().map_or("session error", SessionErrorCode::as_str);
                tracing::warn!(
                    "core {core}: closing connection from {who} (session {id:#x}): {code}: {}",
                    r.text
                );
            }
            if c.in_flight > 0 {
                c.close_msg = Some(r.msg);
            } else {
                c.out.push(&r.msg);
                c.final_sent = true;
                if !c.dirty {
                    c.dirty = true;
                    self.st.dirty.push(slot);
                }
            }
            if r.code() != Some(SessionErrorCode::ServerShutdown) {
                self.st.router.counters.conns_errored += 1;
            }
        }
        self.cancel_recv(slot);
        self.st.router.md_drop_all(slot);
        if was_active && cancel_on_disconnect {
            self.st.cancel_session_everywhere(id, account);
        }
        self.st.to_close.push(slot);
    }

    /// Frees closing connections whose output is flushed (or whose flush
    /// timed out) and whose operations have all completed.
    pub(super) fn finish_closes(&mut self) {
        let now = self.st.now_ns;
        let mut i = 0;
        while i < self.st.to_close.len() {
            let slot = self.st.to_close[i];
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                self.st.to_close.swap_remove(i);
                continue;
            };
            let flushed =
                c.in_flight == 0 && c.close_msg.is_none() && c.out_bytes() == 0 && !c.send_inflight;
            let timed_out = now.saturating_sub(c.closing_since_ns) > CLOSE_FLUSH_NS;
            if (flushed || timed_out) && !c.shut_down {
                // Ends the recv (and a stuck send) so their completions
                // arrive; a peer already gone makes this fail, harmlessly.
                let _ = c.stream.shutdown(Shutdown::Both);
                c.shut_down = true;
            }
            if c.shut_down && !c.ops_in_flight() {
                if let Some(p) = self.st.router.conns.remove(slot).and_then(|c| c.peer) {
                    self.st.shared.admission.release_address(p.ip());
                }
                self.st.to_close.swap_remove(i);
                self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            i += 1;
        }
    }

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        let Some(stream) = accepted_socket(res) else {
            if res != -libc::ECANCELED {
                tracing::error!(
                    "core {}: accept failed: {}",
                    self.st.cfg.index,
                    io::Error::from_raw_os_error(-res)
                );
            }
            return;
        };
        if self.st.draining {
            return;
        }
        let max = self.st.cfg.max_connections;
        let live = self.st.shared.conns_live.fetch_add(1, Ordering::Relaxed);
        if live >= max {
            self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
            refuse(
                stream,
                max,
                format!("the server is at its limit of {max} connections"),
            );
            return;
        }
        // Reports must not wait for Nagle; a failure here only costs latency.
        let _ = stream.set_nodelay(true);
        // TLS (core/tls.rs): the handshake runs off the core; `adopt_handshaken` admits it.
        if let Some(tls) = &self.tls {
            if let Err(stream) = tls.start_handshake(stream) {
                self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(
                    "core {}: {} TLS handshakes are waiting; closing a new connection",
                    self.st.cfg.index,
                    crate::server::tls::HANDSHAKE_QUEUE_MAX
                );
                drop(stream);
            }
            return;
        }
        self.admit(stream, None);
    }

    /// Gives an accepted (and, with TLS, handshaken) connection a slot and
    /// starts receiving; its slot, or `None` when it was refused.
    pub(super) fn admit(
        &mut self,
        stream: std::net::TcpStream,
        tls: Option<Box<super::tls::ConnTls>>,
    ) -> Option<u32> {
        let max = self.st.cfg.max_connections;
        // Counted here, once the connection is about to get a slot (after
        // its TLS handshake, if any), so that every path that drops it
        // before has nothing to give back.
        let peer = stream.peer_addr().ok();
        let per_address = self.st.cfg.max_connections_per_address;
        if let Some(p) = peer
            && !self
                .st
                .shared
                .admission
                .acquire_address(p.ip(), per_address)
        {
            self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
            let ip = p.ip().to_canonical();
            refuse(
                stream,
                per_address as usize,
                format!("{ip} has its limit of {per_address} connections"),
            );
            return None;
        }
        let Some((slot, generation)) = self.st.router.conns.reserve() else {
            self.st.shared.conns_live.fetch_sub(1, Ordering::Relaxed);
            if let Some(p) = peer {
                self.st.shared.admission.release_address(p.ip());
            }
            refuse(
                stream,
                max,
                format!("the server is at its limit of {max} connections"),
            );
            return None;
        };
        let mut out = FrameBuf::new(
            CONN_BUFFER_BYTES,
            self.st.cfg.max_frame_bytes,
            self.st.cfg.batch.min(usize::from(u16::MAX)) as u16,
        );
        // Until a Hello says otherwise (a session error before the logon
        // goes to a client of unknown version): the oldest version.
        out.set_version(wire::PROTOCOL_VERSION_MIN);
        let id = SessionId::new(self.st.cfg.index as u16, generation, slot);
        let mut conn = Conn::new(stream, id, self.st.now_ns, out, peer);
        conn.tls = tls;
        self.st.router.conns.insert(slot, conn);
        self.st.router.counters.conns_accepted += 1;
        self.arm_recv(slot);
        Some(slot)
    }

    pub(super) fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let buffer = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(c) = self.st.router.conns.get_mut(slot, generation) else {
            if let Some(bid) = buffer {
                self.bufring.recycle(bid);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        if res <= 0 {
            if let Some(bid) = buffer {
                self.bufring.recycle(bid);
            }
            match -res {
                0 => self.begin_close(slot, None), // peer closed
                libc::ENOBUFS => {}                // buffers ran out: re-armed below
                libc::ECANCELED => {}              // paused by backpressure or closing
                e => {
                    // The connection is broken: no SessionError can reach
                    // the client, and it is not the client's protocol error.
                    if e != libc::ECONNRESET {
                        tracing::warn!(
                            "core {}: receive failed: {}; closing the connection",
                            self.st.cfg.index,
                            io::Error::from_raw_os_error(e)
                        );
                    }
                    self.begin_close(slot, None);
                }
            }
            if !more {
                self.arm_recv(slot);
            }
            return;
        }
        let Some(bid) = buffer else {
            debug_assert!(false, "a multishot recv completion without a buffer");
            self.st.router.counters.internal_errors += 1;
            return;
        };
        let len = res as usize;
        c.last_recv_ns = self.st.now_ns;
        self.st.router.counters.bytes_in += len as u64;
        if c.tls.is_some() {
            // TLS (core/tls.rs): decrypt into `inbuf`, then as below.
            self.recv_tls(slot, Some((bid, len)));
        } else if c.phase() == Phase::Closing {
            self.bufring.recycle(bid);
        } else if c.inbuf.is_empty() && !c.blocked {
            // Fast path: decode straight from the kernel's buffer.
            let data = self.bufring.data(bid, len);
            let (consumed, cursor, end) = handle_input(&self.session, &mut self.st, slot, data, 0);
            let now = self.st.now_ns;
            let max_frame = self.st.cfg.max_frame_bytes as usize;
            if let Some(c) = self.st.router.conns.get_mut(slot, generation) {
                append_input(&mut c.inbuf, &data[consumed..], max_frame);
                c.cursor = cursor;
                note_partial_frame(c, consumed, now);
            }
            self.bufring.recycle(bid);
            self.after_input(slot, end);
        } else {
            let max_frame = self.st.cfg.max_frame_bytes as usize;
            append_input(&mut c.inbuf, self.bufring.data(bid, len), max_frame);
            self.bufring.recycle(bid);
            if !c.blocked {
                self.process_inbuf(slot);
            }
        }
        self.charge_input(slot);
        if !more {
            self.arm_recv(slot);
        }
    }

    /// Counts a connection's input buffer in its core's input memory
    /// (`--input-memory-per-core`); a connection whose buffer grew and
    /// took the core past it is closed, which frees its buffer.
    pub(super) fn charge_input(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        let capacity = c.inbuf.capacity();
        if c.phase() == Phase::Closing || capacity == c.inbuf_charged {
            return;
        }
        let grew = capacity > c.inbuf_charged;
        self.st.input_bytes = self.st.input_bytes.saturating_sub(c.inbuf_charged) + capacity;
        c.inbuf_charged = capacity;
        let budget = self.st.cfg.input_memory;
        if grew && self.st.input_bytes > budget {
            let text = format!(
                "the server's input memory is full ({budget} bytes per core for partial frames); a partial frame needed {capacity} bytes"
            );
            self.begin_close(
                slot,
                Some(CloseReason::new(
                    SessionErrorCode::TooManyConnections,
                    0,
                    0,
                    text,
                )),
            );
        }
    }

    /// Processes what a connection holds in `inbuf`.
    pub(super) fn process_inbuf(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        let inbuf = std::mem::take(&mut c.inbuf);
        let cursor = c.cursor;
        let (consumed, cursor, end) =
            handle_input(&self.session, &mut self.st, slot, &inbuf, cursor);
        let mut inbuf = inbuf;
        inbuf.drain(..consumed);
        if inbuf.is_empty() {
            // No partial frame: the memory goes back to the core's budget.
            inbuf = Vec::new();
        }
        let now = self.st.now_ns;
        if let Some(c) = self.st.router.conns.slot_mut(slot) {
            c.inbuf = inbuf;
            c.cursor = cursor;
            note_partial_frame(c, consumed, now);
        }
        self.after_input(slot, end);
        self.charge_input(slot);
    }

    fn after_input(&mut self, slot: u32, end: InputEnd) {
        self.st.collect_dirty();
        match end {
            InputEnd::Done => {
                if let Some(c) = self.st.router.conns.slot_mut(slot)
                    && c.out.len() >= self.st.cfg.out_high_water_bytes
                {
                    self.block(slot);
                }
            }
            InputEnd::Blocked => self.block(slot),
            InputEnd::Fenced => {
                if let Some(c) = self.st.router.conns.slot_mut(slot) {
                    c.fenced = true;
                }
                self.block(slot);
            }
            InputEnd::Close(reason) => self.begin_close(slot, Some(reason)),
            // The password is checked off the core: hold the input until
            // `poll_auth` has the verdict.
            InputEnd::Pending => self.block(slot),
        }
    }

    fn block(&mut self, slot: u32) {
        let Some(c) = self.st.router.conns.slot_mut(slot) else {
            return;
        };
        c.blocked = true;
        if !c.listed_blocked {
            c.listed_blocked = true;
            self.st.blocked.push(slot);
        }
        // Stop the kernel from handing us more bytes: TCP backpressure.
        self.cancel_recv(slot);
    }

    /// Resumes blocked connections whose reasons cleared.
    pub(super) fn retry_blocked(&mut self) {
        if self.st.router.congested || self.st.draining {
            return;
        }
        let high_water = self.st.cfg.out_high_water_bytes;
        let mut i = 0;
        while i < self.st.blocked.len() {
            let slot = self.st.blocked[i];
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                self.st.blocked.swap_remove(i);
                continue;
            };
            if c.phase() == Phase::Closing {
                c.listed_blocked = false;
                self.st.blocked.swap_remove(i);
                continue;
            }
            if c.out.len() >= high_water
                || (c.fenced && c.in_flight > 0)
                || c.phase() == Phase::Authenticating
            {
                i += 1;
                continue;
            }
            c.blocked = false;
            c.fenced = false;
            c.listed_blocked = false;
            self.st.blocked.swap_remove(i);
            self.process_inbuf(slot);
            if self
                .st
                .router
                .conns
                .slot_mut(slot)
                .is_some_and(|c| !c.blocked)
            {
                self.arm_recv(slot);
            }
            if self.st.router.congested {
                return;
            }
        }
    }

    pub(super) fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = self.st.router.conns.get_mut(slot, generation) else {
            debug_assert!(false, "a send completed for a freed connection");
            self.st.router.counters.internal_errors += 1;
            return;
        };
        c.send_inflight = false;
        if res < 0 {
            c.sending.clear();
            c.send_pos = 0;
            c.out.clear();
            let e = -res;
            if e != libc::EPIPE && e != libc::ECONNRESET {
                tracing::warn!(
                    "core {}: send failed: {}",
                    self.st.cfg.index,
                    io::Error::from_raw_os_error(e)
                );
            }
            self.begin_close(slot, None);
            return;
        }
        c.send_pos += res as usize;
        self.st.router.counters.bytes_out += res as u64;
        if c.send_pos < c.sending.len() || !c.out.is_empty() {
            self.start_send(slot);
        } else {
            c.sending.clear();
            c.send_pos = 0;
        }
    }

    /// Starts a send for every connection with new output, and cuts off
    /// those whose unread output passed the limit. Loops until no
    /// connection is left marked: a cut-off queues its SessionError, which
    /// must leave now, not at the close-flush timeout.
    pub(super) fn send_dirty(&mut self) {
        let out_max = self.st.cfg.out_max_bytes;
        while !self.st.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.st.dirty);
            for &slot in &dirty {
                let Some(c) = self.st.router.conns.slot_mut(slot) else {
                    continue;
                };
                c.dirty = false;
                if c.out_bytes() > out_max && c.phase() != Phase::Closing {
                    let bytes = c.out_bytes();
                    c.out.clear();
                    let r = CloseReason::new(
                        SessionErrorCode::SlowConsumer,
                        0,
                        0,
                        format!("{bytes} bytes of reports unread; the limit is {out_max}"),
                    );
                    self.begin_close(slot, Some(r));
                    continue;
                }
                self.start_send(slot);
            }
            dirty.clear();
            // Keep the capacity; closes above may have marked more slots.
            dirty.append(&mut self.st.dirty);
            self.st.dirty = dirty;
        }
    }

    /// Sends the operator's kill switch commands (core 0 only) to every
    /// shard, where they are journaled and applied like client commands.
    pub(super) fn take_operator_commands(&mut self) {
        let mut actions = Vec::new();
        self.st.shared.operator.take(&mut actions);
        for (action, account) in actions {
            self.st.route_everywhere(action.command(account));
        }
    }

    /// Idle timeouts, server heartbeats, slow consumers, dead-man's timers.
    pub(super) fn housekeeping(&mut self) {
        let now = self.st.now_ns;
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                continue;
            };
            let clock = Clock {
                now_ns: now,
                last_recv_ns: c.last_recv_ns,
                last_out_ns: c.last_out_ns,
                send_started_ns: c.send_inflight.then_some(c.send_started_ns),
                out_bytes: c.out_bytes(),
                held_back: c.blocked,
                accepted_ns: c.accepted_ns,
                frame_started_ns: c.frame_started_ns,
            };
            match self.session.poll_timers(&c.session, &clock) {
                Timer::Nothing => {}
                Timer::Close(r) => self.begin_close(slot, Some(r)),
                Timer::CancelAll => {
                    // The dead-man's timer ran out: a MassCancel of all
                    // symbols, counted in flight like the client's own.
                    let mut session = c.session;
                    let mut fx = CoreEffects {
                        st: &mut self.st,
                        slot,
                    };
                    self.session.cancel_all(&mut session, &mut fx);
                    if let Some(c) = self.st.router.conns.slot_mut(slot) {
                        c.session = session;
                    }
                }
                Timer::Heartbeat => {
                    c.out.push(&ServerHeartbeat {
                        token: realtime_ns().into(),
                    });
                    c.last_out_ns = now;
                    if !c.dirty {
                        c.dirty = true;
                        self.st.dirty.push(slot);
                    }
                }
            }
        }
    }

    /// Takes the auth thread's verdicts: a logon granted (and within its
    /// account's session limit) gets its HelloAck and its input back; a
    /// refused one is closed with the reason.
    pub(super) fn poll_auth(&mut self) {
        loop {
            let Some((link, verdicts)) = &self.st.cfg.auth else {
                return;
            };
            let Ok(v) = verdicts.try_recv() else {
                return;
            };
            link.answered();
            let Some(c) = self.st.router.conns.get_mut(v.slot, v.generation) else {
                continue;
            };
            if c.phase() != Phase::Authenticating {
                continue;
            }
            let account = c.session.account;
            let reason = match v.outcome {
                Outcome::Granted { max_sessions } => {
                    let max = max_sessions.unwrap_or(self.st.cfg.max_sessions_per_account);
                    if self.st.shared.admission.acquire_session(account, max) {
                        c.session_counted = true;
                        let mut session = c.session;
                        let mut fx = CoreEffects {
                            st: &mut self.st,
                            slot: v.slot,
                        };
                        self.session.complete_logon(&mut session, &mut fx);
                        if let Some(c) = self.st.router.conns.slot_mut(v.slot) {
                            c.session = session;
                        }
                        self.st.collect_dirty();
                        // `retry_blocked` gives the input back.
                        continue;
                    }
                    too_many_sessions(account, max)
                }
                Outcome::Refused(text) => CloseReason::new(
                    SessionErrorCode::AuthenticationFailed,
                    wire::Kind::Hello as u8,
                    0,
                    text,
                ),
            };
            self.begin_close(v.slot, Some(reason));
        }
    }

    /// Stops reading: cancel the accept and every recv.
    pub(super) fn start_draining(&mut self) {
        self.st.draining = true;
        if let Some(l) = self.listener.take() {
            self.ops.cancel_accept();
            drop(l);
        }
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            if let Some(c) = self.st.router.conns.slot_mut(slot) {
                c.blocked = true;
            }
            self.cancel_recv(slot);
        }
        self.st.shared.stats[self.st.cfg.index]
            .draining
            .store(true, Ordering::Release);
    }

    /// Cluster only: closes, with `SessionError(ShardTakenOver)`, every
    /// session that sent a NewOrder or Replace to a shard whose copy here
    /// was set to detach its orders' sessions since the last look (this
    /// node applied another node's records to it as a standby, or
    /// reloaded it to take it over again; it served nobody's orders there
    /// meanwhile, so every such session's orders came before). Their
    /// orders rest on, belonging to no session, and their fills reach
    /// nobody: closed, the client knows to reconcile them (PROTOCOL.md
    /// §8.11 rule 9), even when the owner it sees never changed. Once per
    /// tick; one atomic load per shard when nothing moved.
    pub(super) fn close_detached(&mut self) {
        let Some(view) = self.st.cfg.cluster.clone() else {
            return;
        };
        let mut moved = Vec::new();
        for (shard, seen) in self.detach_seen.iter_mut().enumerate() {
            let now = view.detach_count(shard as u32);
            if now != *seen {
                *seen = now;
                moved.push(shard as u32);
            }
        }
        if moved.is_empty() {
            return;
        }
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            let Some(c) = self.st.router.conns.slot_mut(slot) else {
                continue;
            };
            if c.phase() == Phase::Closing {
                continue;
            }
            let Some(&shard) = moved.iter().find(|&&s| c.routed_to_shard(s)) else {
                continue;
            };
            let r = CloseReason::new(
                SessionErrorCode::ShardTakenOver,
                0,
                shard,
                format!(
                    "shard {shard} changed hands: the session's orders resting there belong \
                     to no session now; reconcile them with OrderQuery"
                ),
            );
            self.begin_close(slot, Some(r));
        }
    }

    /// Tells every connection the server is shutting down.
    pub(super) fn close_all(&mut self) {
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        for slot in slots {
            let r = CloseReason::new(
                SessionErrorCode::ServerShutdown,
                0,
                0,
                "the server is shutting down",
            )
            .quiet();
            self.begin_close(slot, Some(r));
        }
    }

    /// True when nothing is staged and no connection has output waiting.
    pub(super) fn output_flushed(&mut self) -> bool {
        if self.st.router.staging.iter().any(|q| !q.is_empty()) {
            return false;
        }
        let slots: Vec<u32> = self.st.router.conns.live_slots().collect();
        slots.into_iter().all(|slot| {
            self.st
                .router
                .conns
                .slot_mut(slot)
                .is_none_or(|c| c.out_bytes() == 0 && !c.send_inflight)
        })
    }
}

/// Runs the session layer over a connection's input.
fn handle_input<M: Matcher + Snapshot>(
    layer: &SessionLayer,
    st: &mut super::State<M>,
    slot: u32,
    data: &[u8],
    cursor: usize,
) -> (usize, usize, InputEnd) {
    let Some(c) = st.router.conns.slot_mut(slot) else {
        return (data.len(), 0, InputEnd::Done);
    };
    // The session state is small and Copy: work on a copy so the effects
    // may borrow the core (and this connection's output).
    let mut session = c.session;
    let mut fx = CoreEffects { st, slot };
    let result = layer.handle_input(&mut session, data, cursor, &mut fx);
    if let Some(c) = st.router.conns.slot_mut(slot) {
        c.session = session;
    }
    result
}

/// Appends received bytes to a connection's input. A buffer that must
/// grow is sized for the frame it holds (from its header's length, at most
/// `max_frame`) rather than doubled, so the input memory charged to the
/// core is what the frame needs, and dripped bytes do not reallocate.
fn append_input(inbuf: &mut Vec<u8>, data: &[u8], max_frame: usize) {
    let need = inbuf.len() + data.len();
    if need > inbuf.capacity() {
        let mut header = [0u8; 4];
        for (i, b) in inbuf.iter().chain(data).take(4).enumerate() {
            header[i] = *b;
        }
        let frame = (u32::from_le_bytes(header) as usize).min(max_frame);
        inbuf.reserve_exact(need.max(frame) - inbuf.len());
    }
    inbuf.extend_from_slice(data);
}

/// Keeps `frame_started_ns` on the first byte of the incomplete frame
/// that `inbuf` holds after `consumed` bytes were processed: whole frames
/// were taken, so what is left began in this receive.
fn note_partial_frame(c: &mut Conn, consumed: usize, now_ns: u64) {
    if c.inbuf.is_empty() {
        c.frame_started_ns = None;
    } else if consumed > 0 || c.frame_started_ns.is_none() {
        c.frame_started_ns = Some(now_ns);
    }
}

/// Tells a connection over a limit why, without giving it a slot.
fn refuse(stream: std::net::TcpStream, max: usize, text: String) {
    use std::io::Write as _;
    let mut buf = Vec::with_capacity(80);
    // The client's version is unknown: the oldest one.
    let mut w = wire::FrameWriter::new(&mut buf).with_version(wire::PROTOCOL_VERSION_MIN);
    w.push(&SessionError::new(
        SessionErrorCode::TooManyConnections,
        0,
        max as u32,
        &text,
    ));
    // Best effort, never blocking the core: a full socket buffer loses it.
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(&buf);
    }
}
