//! Beyond one machine: how a node finds the NATS server that carries the
//! cluster's control plane ([`discovery`]: `NATS_URL`, multicast DNS, a
//! server on this host, or one it starts), and the nats-server child
//! process it starts when there is none ([`natsd`]).

pub mod discovery;
pub mod natsd;
