//! ptr-ring
