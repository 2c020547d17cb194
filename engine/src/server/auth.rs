//! Who may connect and log on: the auth thread that checks passwords
//! (argon2id takes tens of milliseconds, far too long for an engine core),
//! the failed-logon limit per source address, and the shared counters of
//! sessions per account and connections per address.
//!
//! The path of a logon with `--accounts` (README "Accounts, limits and
//! security"):
//!
//! 1. the core's session layer takes the Hello, holds the connection's
//!    input and hands `(core, slot, generation, account, password, peer)`
//!    to this thread over a bounded channel ([`AUTH_PENDING_MAX`] logons
//!    in flight over all cores; past it a logon is refused at once);
//! 2. this thread takes the logons in two lanes ([`LogonQueue`]): first
//!    those from addresses with no failed logon in the current window and
//!    no other logon waiting, then the rest, each lane in arrival order; a
//!    logon that waited [`AUTH_WAIT_MAX_NS`] is refused at once ("busy"),
//!    unchecked; an address over its failure limit is refused at once;
//!    every other logon has its password verified (an unknown account
//!    against a dummy hash, so that it costs the same);
//! 3. a success goes back at once, a failure after [`AUTH_FAILURE_DELAY_NS`]
//!    (a queue of due answers, so one delayed answer never holds up other
//!    logons), each into the core's verdict channel, and the core is woken
//!    (its eventfd);
//! 4. the core counts the session against its account's limit and sends
//!    the HelloAck, or the SessionError, and lets the input go on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::limits::{
    AUTH_ADDRESSES_MAX, AUTH_FAILURE_DELAY_NS, AUTH_FAILURE_WINDOW_NS, AUTH_PENDING_MAX,
    AUTH_WAIT_MAX_NS,
};
use super::{Shared, monotonic_ns};
use crate::accounts::{Accounts, PASSWORD_BYTES_MAX, password_of, verify_password};

/// A logon for the auth thread.
pub struct AuthRequest {
    pub core: usize,
    pub slot: u32,
    pub generation: u32,
    pub account: u64,
    /// The Hello's credentials field (the password, NUL-padded).
    pub password: [u8; PASSWORD_BYTES_MAX],
    pub peer: Option<IpAddr>,
}

/// The auth thread's answer to one logon.
#[derive(Debug)]
pub struct Verdict {
    pub slot: u32,
    pub generation: u32,
    pub outcome: Outcome,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The password is right: the account's own session limit, if it has one.
    Granted { max_sessions: Option<u32> },
    /// Refused (AuthenticationFailed), with the text for the client.
    Refused(String),
}

/// The text of a refusal for wrong credentials (the same for an unknown
/// account, a wrong password and a source address the account may not use).
pub const REFUSED_TEXT: &str = "the account id or password was refused";

/// Counters shared by the cores, touched at accept, logon and close only
/// (never per order).
#[derive(Default)]
pub struct Admission {
    sessions: Mutex<HashMap<u64, u32>>,
    addresses: Mutex<HashMap<IpAddr, u32>>,
    /// Logons handed to the auth thread and not yet answered.
    pending: AtomicUsize,
}

impl Admission {
    /// Counts a session of `account` unless it has `max` already.
    pub fn acquire_session(&self, account: u64, max: u32) -> bool {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(account).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_session(&self, account: u64) {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&account);
            }
        }
    }

    /// Counts a connection from `ip` unless it has `max` already.
    pub fn acquire_address(&self, ip: IpAddr, max: u32) -> bool {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip.to_canonical()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_address(&self, ip: IpAddr) {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let ip = ip.to_canonical();
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Sessions of `account` now (for tests and stats).
    pub fn sessions_of(&self, account: u64) -> u32 {
        let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&account).copied().unwrap_or(0)
    }
}

/// A core's side of the auth thread.
pub struct AuthLink {
    requests: SyncSender<AuthRequest>,
    admission: Arc<Admission>,
}

impl Clone for AuthLink {
    fn clone(&self) -> Self {
        AuthLink {
            requests: self.requests.clone(),
            admission: Arc::clone(&self.admission),
        }
    }
}

/// The text of a logon refused unchecked because too many wait for the
/// auth thread, or because it waited too long.
pub const BUSY_TEXT: &str = "busy with other logons; try again in a second";

impl AuthLink {
    /// Hands a logon to the auth thread; `Err` with the refusal text when
    /// too many logons are in flight already.
    pub fn submit(&self, req: AuthRequest) -> Result<(), &'static str> {
        const BUSY: &str = BUSY_TEXT;
        if self.admission.pending.fetch_add(1, Ordering::Relaxed) >= AUTH_PENDING_MAX {
            self.admission.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(BUSY);
        }
        match self.requests.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.admission.pending.fetch_sub(1, Ordering::Relaxed);
                Err(BUSY)
            }
        }
    }

    /// A verdict arrived: one logon fewer in flight.
    pub fn answered(&self) {
        self.admission.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Failed logons per source address in fixed windows (pure: time comes in).
pub struct FailureLimiter {
    max_failures: u32,
    windows: HashMap<IpAddr, Window>,
}

struct Window {
    start_ns: u64,
    failures: u32,
    /// The limit was logged in this window.
    logged: bool,
}

/// What the limiter says about a logon from an address.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Allowed,
    /// Over the limit: refuse now. `log`: the first refusal of this window
    /// (log it once); `retry_s`: when the window ends.
    Limited {
        log: bool,
        failures: u32,
        retry_s: u64,
    },
}

impl FailureLimiter {
    pub fn new(max_failures: u32) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            windows: HashMap::new(),
        }
    }

    pub fn check(&mut self, ip: IpAddr, now_ns: u64) -> Check {
        let Some(w) = self.windows.get_mut(&ip) else {
            return Check::Allowed;
        };
        if now_ns.saturating_sub(w.start_ns) >= AUTH_FAILURE_WINDOW_NS {
            self.windows.remove(&ip);
            return Check::Allowed;
        }
        if w.failures < self.max_failures {
            return Check::Allowed;
        }
        let log = !w.logged;
        w.logged = true;
        let left_ns = (w.start_ns + AUTH_FAILURE_WINDOW_NS).saturating_sub(now_ns);
        Check::Limited {
            log,
            failures: w.failures,
            retry_s: left_ns.div_ceil(1_000_000_000),
        }
    }

    /// Whether `ip` has a failed logon in its current window.
    pub fn has_failed(&self, ip: IpAddr, now_ns: u64) -> bool {
        self.windows.get(&ip).is_some_and(|w| {
            w.failures > 0 && now_ns.saturating_sub(w.start_ns) < AUTH_FAILURE_WINDOW_NS
        })
    }

    pub fn failed(&mut self, ip: IpAddr, now_ns: u64) {
        if self.windows.len() >= AUTH_ADDRESSES_MAX && !self.windows.contains_key(&ip) {
            self.windows
                .retain(|_, w| now_ns.saturating_sub(w.start_ns) < AUTH_FAILURE_WINDOW_NS);
            if self.windows.len() >= AUTH_ADDRESSES_MAX {
                // Bounded memory first: an address beyond the table is not tracked.
                return;
            }
        }
        let w = self.windows.entry(ip).or_insert(Window {
            start_ns: now_ns,
            failures: 0,
            logged: false,
        });
        if now_ns.saturating_sub(w.start_ns) >= AUTH_FAILURE_WINDOW_NS {
            *w = Window {
                start_ns: now_ns,
                failures: 0,
                logged: false,
            };
        }
        w.failures += 1;
    }
}

/// Logons waiting for a password check, in two lanes, so that a flood of
/// bad logons does not hold up a good one for long (pure: time and the
/// limiter's view come in). The clean lane takes a logon from an address
/// with no failed logon in its window and no other logon waiting: at most
/// one per address, so a flood from one address (or a few) never fills
/// it. Everything else goes to the suspect lane. The clean lane is served
/// first; each lane in arrival order.
pub struct LogonQueue<T> {
    clean: VecDeque<Waiting<T>>,
    suspect: VecDeque<Waiting<T>>,
    /// Logons waiting per address, both lanes.
    waiting: HashMap<IpAddr, u32>,
}

struct Waiting<T> {
    since_ns: u64,
    peer: Option<IpAddr>,
    item: T,
}

impl<T> Default for LogonQueue<T> {
    fn default() -> Self {
        LogonQueue {
            clean: VecDeque::new(),
            suspect: VecDeque::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<T> LogonQueue<T> {
    /// Queues a logon from `peer` that arrived at `now_ns`; `failed`: the
    /// address has a failed logon in its current window.
    pub fn push(&mut self, peer: Option<IpAddr>, failed: bool, now_ns: u64, item: T) {
        let others = peer.map_or(0, |ip| self.waiting.get(&ip).copied().unwrap_or(0));
        if let Some(ip) = peer {
            *self.waiting.entry(ip).or_insert(0) += 1;
        }
        let w = Waiting {
            since_ns: now_ns,
            peer,
            item,
        };
        if failed || others > 0 {
            self.suspect.push_back(w);
        } else {
            self.clean.push_back(w);
        }
    }

    /// The next logon (clean lane first) and how long it waited.
    pub fn pop(&mut self, now_ns: u64) -> Option<(T, u64)> {
        let w = self
            .clean
            .pop_front()
            .or_else(|| self.suspect.pop_front())?;
        if let Some(ip) = w.peer
            && let Some(n) = self.waiting.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&ip);
            }
        }
        Some((w.item, now_ns.saturating_sub(w.since_ns)))
    }

    pub fn len(&self) -> usize {
        self.clean.len() + self.suspect.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The auth thread and the cores' links to it.
pub struct AuthService {
    pub links: Vec<AuthLink>,
    pub verdicts: Vec<Receiver<Verdict>>,
    pub thread: JoinHandle<()>,
}

/// Starts the auth thread for `cores` cores.
pub fn spawn(
    accounts: Arc<Accounts>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    cores: usize,
    max_failures: u32,
) -> std::io::Result<AuthService> {
    let (tx, rx) = std::sync::mpsc::sync_channel(AUTH_PENDING_MAX);
    let mut senders = Vec::with_capacity(cores);
    let mut verdicts = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (s, r) = std::sync::mpsc::channel();
        senders.push(s);
        verdicts.push(r);
    }
    let thread = std::thread::Builder::new()
        .name("turbo-dex-auth".into())
        .spawn(move || run(&accounts, &shared, &rx, &senders, max_failures))?;
    let links = (0..cores)
        .map(|_| AuthLink {
            requests: tx.clone(),
            admission: Arc::clone(&admission),
        })
        .collect();
    Ok(AuthService {
        links,
        verdicts,
        thread,
    })
}

/// The thread: verify, answer successes now and failures when due; ends
/// when every core has dropped its link.
fn run(
    accounts: &Accounts,
    shared: &Shared,
    requests: &Receiver<AuthRequest>,
    cores: &[Sender<Verdict>],
    max_failures: u32,
) {
    // Unknown accounts are checked against this, so they cost what a real
    // check costs (no telling which ids exist by timing).
    let dummy = crate::accounts::hash_password(b"no such account", &[0x5a; 16]).ok();
    let mut limiter = FailureLimiter::new(max_failures);
    let mut due: VecDeque<(u64, usize, Verdict)> = VecDeque::new();
    let mut queue: LogonQueue<AuthRequest> = LogonQueue::default();
    let answer = |core: usize, v: Verdict| {
        if let Some(tx) = cores.get(core)
            && tx.send(v).is_ok()
        {
            // Always kick (not only when asleep): a verdict is rare, and
            // the core then needs no extra check before it sleeps.
            shared.kick(core);
        }
    };
    loop {
        let now = monotonic_ns();
        while due.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, core, v)) = due.pop_front() {
                answer(core, v);
            }
        }
        // Everything that arrived goes into the lanes before one is taken.
        loop {
            match requests.try_recv() {
                Ok(r) => {
                    let failed = r.peer.is_some_and(|ip| limiter.has_failed(ip, now));
                    queue.push(r.peer, failed, now, r);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if queue.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        if queue.is_empty() {
            let wait_ns = due
                .front()
                .map_or(1_000_000_000, |(at, _, _)| at.saturating_sub(now));
            match requests.recv_timeout(Duration::from_nanos(wait_ns)) {
                Ok(r) => {
                    let now = monotonic_ns();
                    let failed = r.peer.is_some_and(|ip| limiter.has_failed(ip, now));
                    queue.push(r.peer, failed, now, r);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let now = monotonic_ns();
        let Some((mut req, waited_ns)) = queue.pop(now) else {
            continue;
        };
        let verdict = |outcome| Verdict {
            slot: req.slot,
            generation: req.generation,
            outcome,
        };
        if waited_ns >= AUTH_WAIT_MAX_NS {
            answer(req.core, verdict(Outcome::Refused(BUSY_TEXT.into())));
            continue;
        }
        if let Some(ip) = req.peer
            && let Check::Limited {
                log,
                failures,
                retry_s,
            } = limiter.check(ip, now)
        {
            if log {
                tracing::warn!(
                    "{failures} failed logons from {ip} within {} s; refusing its logons for {retry_s} s",
                    AUTH_FAILURE_WINDOW_NS / 1_000_000_000
                );
            }
            let text = format!("too many failed logons from {ip}; retry in {retry_s} s");
            answer(req.core, verdict(Outcome::Refused(text)));
            continue;
        }
        let password = password_of(&req.password);
        let (ok, max_sessions) = match accounts.get(req.account) {
            Some(a) => (
                verify_password(&a.phc, password) && a.allows(req.peer),
                a.max_sessions,
            ),
            None => {
                if let Some(d) = &dummy {
                    let _ = verify_password(d, password);
                }
                (false, None)
            }
        };
        // The password is not kept past its check (black_box: the store
        // is not optimized away as dead).
        req.password.fill(0);
        std::hint::black_box(&req.password);
        if ok {
            answer(req.core, verdict(Outcome::Granted { max_sessions }));
        } else {
            if let Some(ip) = req.peer {
                limiter.failed(ip, now);
            }
            tracing::debug!(
                "failed logon for account {} from {:?}",
                req.account,
                req.peer
            );
            let v = verdict(Outcome::Refused(REFUSED_TEXT.into()));
            due.push_back((monotonic_ns() + AUTH_FAILURE_DELAY_NS, req.core, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn failures_past_the_limit_are_refused_until_the_window_ends_and_logged_once() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut l = FailureLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(l.check(ip, S), Check::Allowed);
            l.failed(ip, S);
        }
        assert_eq!(
            l.check(ip, 2 * S),
            Check::Limited {
                log: true,
                failures: 3,
                retry_s: 59
            }
        );
        assert!(matches!(
            l.check(ip, 3 * S),
            Check::Limited { log: false, .. }
        ));
        assert_eq!(l.check(other, 3 * S), Check::Allowed);
        // The window ends a minute after its first failure.
        assert_eq!(l.check(ip, S + AUTH_FAILURE_WINDOW_NS), Check::Allowed);
        l.failed(ip, S + AUTH_FAILURE_WINDOW_NS);
        assert_eq!(l.check(ip, S + AUTH_FAILURE_WINDOW_NS), Check::Allowed);
    }

    #[test]
    fn a_clean_address_goes_before_a_flood_from_others() {
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let failed: IpAddr = "10.0.0.2".parse().unwrap();
        let good: IpAddr = "10.0.0.3".parse().unwrap();
        let mut q = LogonQueue::default();
        // The flood's first logon is clean (no failure yet), the others
        // wait behind it in the suspect lane, as does an address that has
        // failed before.
        for i in 0..100 {
            q.push(Some(flood), false, i, ("flood", i));
        }
        q.push(Some(failed), true, 100, ("failed", 0));
        q.push(Some(good), false, 101, ("good", 0));
        q.push(None, false, 102, ("unix", 0));
        assert_eq!(q.len(), 103);
        assert_eq!(q.pop(1_000), Some((("flood", 0), 1_000)));
        assert_eq!(q.pop(1_000), Some((("good", 0), 899)));
        assert_eq!(q.pop(1_000), Some((("unix", 0), 898)));
        // Then the suspect lane, in arrival order.
        assert_eq!(q.pop(1_000).unwrap().0, ("flood", 1));
        let rest: Vec<_> = std::iter::from_fn(|| q.pop(2_000))
            .map(|(x, _)| x)
            .collect();
        assert_eq!(rest.len(), 99);
        assert_eq!(rest[98], ("failed", 0));
        assert!(q.is_empty());
        // Nothing waits from the flood now: its next logon is clean again
        // unless the limiter has seen it fail.
        q.push(Some(flood), false, 3_000, ("flood", 200));
        q.push(Some(good), false, 3_001, ("good", 1));
        assert_eq!(q.pop(3_002).unwrap().0, ("flood", 200));
        assert_eq!(q.pop(3_002).unwrap().0, ("good", 1));
    }

    #[test]
    fn the_limiter_knows_which_addresses_failed_in_their_window() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l = FailureLimiter::new(3);
        assert!(!l.has_failed(ip, S));
        l.failed(ip, S);
        assert!(l.has_failed(ip, 2 * S));
        assert!(!l.has_failed(ip, S + AUTH_FAILURE_WINDOW_NS));
    }

    #[test]
    fn counters_refuse_past_their_maximum_and_release() {
        let a = Admission::default();
        assert!(a.acquire_session(7, 2));
        assert!(a.acquire_session(7, 2));
        assert!(!a.acquire_session(7, 2));
        assert!(a.acquire_session(8, 2));
        a.release_session(7);
        assert_eq!(a.sessions_of(7), 1);
        assert!(a.acquire_session(7, 2));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(a.acquire_address(ip, 1));
        assert!(!a.acquire_address(mapped, 1));
        a.release_address(mapped);
        assert!(a.acquire_address(ip, 1));
    }
}
