//! A slow guest with a real TCP stack: network namespaces, a second TAP and
//! the vu-bridge process that forwards between the daemon and it.
