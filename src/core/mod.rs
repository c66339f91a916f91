//! What every part of the crate shares.

pub mod settings;
