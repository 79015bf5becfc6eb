//! vu-driver
