//! The session layer's client-order-id rule.
//!
//! Within one session, the client order ids of NewOrders must strictly
//! increase. The session's own core checks this before it routes an order
//! to a shard, so a reused id never reaches a book and costs one compare.
//! Shards separately reject a NewOrder whose (account, id) is live in them
//! or remembered in their history of finished orders, which covers two
//! sessions of one account that reuse each other's ids, and a client that
//! resends an order on a new session (after a disconnect or a restart).

use wire::{Kind, NewOrder, RejectReason, Rejected};

/// Tracks the highest client order id a session has used.
///
/// An id counts as used once admitted here, whatever the shard then
/// answers (a shard reject does not give the id back), so the rule the
/// client sees does not depend on book state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientOrderIds {
    /// The highest admitted id, or `None` before the first NewOrder.
    last: Option<u64>,
}

impl ClientOrderIds {
    /// A fresh session: any first id is admitted.
    pub const fn new() -> Self {
        ClientOrderIds { last: None }
    }

    /// Admits `client_order_id` if it is greater than every id admitted
    /// before (and records it); returns false, recording nothing, if not.
    #[inline]
    pub fn admit(&mut self, client_order_id: u64) -> bool {
        match self.last {
            Some(last) if client_order_id <= last => false,
            _ => {
                self.last = Some(client_order_id);
                true
            }
        }
    }

    /// Checks a NewOrder: `Err` holds the report to send the session
    /// (Rejected, DuplicateClientOrderId) when its id does not increase;
    /// such an order must not be routed to a shard.
    #[inline]
    pub fn check(&mut self, order: &NewOrder) -> Result<(), Rejected> {
        let id = order.client_order_id.get();
        if self.admit(id) {
            Ok(())
        } else {
            Err(Rejected::new(
                id,
                order.symbol.get(),
                RejectReason::DuplicateClientOrderId,
                Kind::NewOrder,
            ))
        }
    }

    /// The highest id admitted so far.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Side;

    #[test]
    fn ids_must_strictly_increase() {
        let mut ids = ClientOrderIds::new();
        assert_eq!(ids.last(), None);
        assert!(ids.admit(5));
        assert!(!ids.admit(5), "an equal id is a duplicate");
        assert!(!ids.admit(4), "a smaller id is a duplicate");
        assert_eq!(ids.last(), Some(5), "a refused id is not recorded");
        assert!(ids.admit(6));
        assert!(ids.admit(100), "gaps are allowed");
        assert!(!ids.admit(99));
    }

    #[test]
    fn zero_is_a_valid_first_id_and_max_is_the_last() {
        let mut ids = ClientOrderIds::new();
        assert!(ids.admit(0));
        assert!(!ids.admit(0));
        assert!(ids.admit(u64::MAX));
        assert!(!ids.admit(u64::MAX));
    }

    #[test]
    fn check_returns_the_reject_to_send() {
        let mut ids = ClientOrderIds::new();
        assert_eq!(ids.check(&NewOrder::limit(7, 3, Side::Buy, 10, 1)), Ok(()));
        let reject = ids
            .check(&NewOrder::limit(7, 3, Side::Sell, 11, 2))
            .unwrap_err();
        assert_eq!(reject.client_order_id.get(), 7);
        assert_eq!(reject.symbol.get(), 3);
        assert_eq!(reject.reason(), Ok(RejectReason::DuplicateClientOrderId));
        assert_eq!(reject.request_kind, Kind::NewOrder as u8);
        assert_eq!(ids.check(&NewOrder::limit(8, 3, Side::Buy, 10, 1)), Ok(()));
    }
}
