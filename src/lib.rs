pub mod data;
pub mod detect;
pub mod error;
