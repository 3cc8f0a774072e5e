//! Layer unpacking (to be written).
