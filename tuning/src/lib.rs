//! Host tuning shared by turbo-dex and dex-trader: CPU lists, pinning,
//! rlimits, socket options, MTU/MSS and host checks.
