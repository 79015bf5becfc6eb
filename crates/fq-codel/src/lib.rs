//! fq-codel
