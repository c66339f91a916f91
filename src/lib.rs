pub mod data;
pub mod detect;
pub mod error;
pub mod eval;
pub mod ood;
pub mod render;
