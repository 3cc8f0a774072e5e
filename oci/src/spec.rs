//! Runtime specs (to be written).
