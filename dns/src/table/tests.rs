//! Unit tests of the lookup table.
