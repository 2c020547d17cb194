//! The kill switch's way from the admin thread to the engine: a small
//! bounded queue that the admin thread fills and core 0 drains.
//!
//! The cores never wait on it: core 0 reads one atomic flag per loop
//! iteration (a cache line only the rare operator action writes), and takes
//! the queue's lock only when the flag says something is there; the admin
//! thread then kicks core 0 awake. Core 0 sends each command to every
//! shard of every core over the ordinary routes, where it is journaled
//! like any client command, so a restart replays it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::book::{Command, Op};
use crate::session_id::SessionId;

/// Operator commands that may wait for core 0 at once; more are refused
/// (the admin endpoint answers 503) rather than queued without bound.
pub const OPERATOR_QUEUE_MAX: usize = 1_024;

/// What an operator asks for an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Cancel every live order of the account and block its new ones.
    Kill,
    /// Lift the block.
    Unblock,
}

impl OperatorAction {
    /// The book command for `account`. Its session is [`SessionId::NONE`]:
    /// the kill's reports go to the orders' owners, and nothing waits for it.
    pub fn command(self, account: u64) -> Command {
        Command {
            session: SessionId::NONE,
            account,
            op: match self {
                OperatorAction::Kill => Op::KillAccount,
                OperatorAction::Unblock => Op::UnblockAccount,
            },
        }
    }

    /// The word the admin endpoint and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Kill => "kill",
            OperatorAction::Unblock => "unblock",
        }
    }
}

/// The queue from the admin thread to core 0.
#[derive(Debug, Default)]
pub struct OperatorQueue {
    /// Set after a push; core 0 looks at the queue only when it is set.
    pending: AtomicBool,
    queue: Mutex<VecDeque<(OperatorAction, u64)>>,
}

impl OperatorQueue {
    /// Queues an action (admin thread). False when the queue is full.
    pub fn push(&self, action: OperatorAction, account: u64) -> bool {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= OPERATOR_QUEUE_MAX {
                return false;
            }
            q.push_back((action, account));
        }
        self.pending.store(true, Ordering::Release);
        true
    }

    /// True when something may be queued (core 0, every loop iteration).
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes everything queued, oldest first (core 0, when [`Self::pending`]).
    pub fn take(&self, out: &mut Vec<(OperatorAction, u64)>) {
        // Cleared before the queue is read: a push after this sets it again.
        self.pending.store(false, Ordering::Release);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(q.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_come_out_in_order_and_the_queue_is_bounded() {
        let q = OperatorQueue::default();
        assert!(!q.pending());
        assert!(q.push(OperatorAction::Kill, 7));
        assert!(q.push(OperatorAction::Unblock, 7));
        assert!(q.pending());
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(
            out,
            [(OperatorAction::Kill, 7), (OperatorAction::Unblock, 7)]
        );
        assert!(!q.pending());
        for i in 0..OPERATOR_QUEUE_MAX as u64 {
            assert!(q.push(OperatorAction::Kill, i));
        }
        assert!(!q.push(OperatorAction::Kill, 0), "full");
        assert_eq!(
            OperatorAction::Kill.command(3).op,
            Op::KillAccount,
            "a kill is a KillAccount"
        );
    }
}
