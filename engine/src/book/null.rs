//! The null engine: the transport ceiling. It answers every new order with
//! an accept and does no matching and keeps no book, so a benchmark against
//! it measures everything except the book.

use wire::{Accepted, CancelReason, Canceled, OrderState, OrderStatus, Rejected, Replaced};

#[cfg(test)]
use super::SessionId;
use super::{Command, Matcher, Op, Report, Sink};

/// A shard that accepts everything and matches nothing.
#[derive(Debug)]
pub struct NullShard {
    shard_index: u32,
    next_order: u64,
}

impl NullShard {
    /// A null shard; order ids carry `shard_index` in their top 16 bits like the real shard's.
    pub fn new(shard_index: u32) -> Self {
        NullShard {
            shard_index,
            next_order: 1,
        }
    }
}

impl Matcher for NullShard {
    #[inline]
    fn process<S: Sink>(&mut self, cmd: &Command, now_ns: u64, sink: &mut S) {
        let report = match &cmd.op {
            Op::New(o) => match o.fields() {
                Ok(fields) => {
                    let id = (u64::from(self.shard_index) << 48) | self.next_order;
                    self.next_order += 1;
                    Report::Accepted(Accepted::new(
                        o.client_order_id.get(),
                        id,
                        now_ns,
                        o.symbol.get(),
                        &fields,
                    ))
                }
                Err(e) => Report::Rejected(Rejected::new(
                    o.client_order_id.get(),
                    o.symbol.get(),
                    super::reject_reason_for(&e),
                    wire::Kind::NewOrder,
                )),
            },
            Op::Cancel(c) => Report::Canceled(Canceled::new(
                c.client_order_id.get(),
                c.symbol.get(),
                CancelReason::Requested,
                0,
            )),
            Op::Replace(r) => Report::Replaced(Replaced::new(
                r.client_order_id.get(),
                r.symbol.get(),
                false,
                r.price.get(),
                r.quantity.get(),
            )),
            Op::Query(q) => Report::Status(OrderStatus::new(
                q.client_order_id.get(),
                0,
                q.symbol.get(),
                OrderState::Unknown,
                0,
                0,
            )),
            Op::CancelSession
            | Op::MassCancel { .. }
            | Op::KillAccount
            | Op::UnblockAccount
            | Op::DetachSessions => {
                return;
            }
        };
        sink.emit(cmd.session, report);
    }

    fn state_digest(&self) -> u64 {
        self.next_order
    }

    fn live_orders(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{NewOrder, RejectReason, Side};

    #[test]
    fn accepts_every_valid_order_and_rejects_bad_fields() {
        let mut s = NullShard::new(3);
        let mut out = Vec::new();
        let mut bad = NewOrder::limit(2, 0, Side::Buy, 10, 1);
        bad.side = 0;
        for op in [
            Op::New(NewOrder::limit(1, 0, Side::Buy, 10, 1)),
            Op::New(bad),
        ] {
            s.process(
                &Command {
                    session: SessionId::from_raw(9),
                    account: 1,
                    op,
                },
                5,
                &mut out,
            );
        }
        assert!(
            matches!(out[0], (s, Report::Accepted(a)) if s.get() == 9 && a.order_id.get() == (3 << 48) | 1)
        );
        assert!(
            matches!(out[1], (s, Report::Rejected(r)) if s.get() == 9 && r.reason() == Ok(RejectReason::InvalidSide))
        );
    }
}
