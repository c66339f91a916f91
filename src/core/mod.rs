//! What every part of the crate shares: box geometry, the per-box record a detector hands over,
//! class heads, detection settings, feature sources, file kinds, atomic writes and the safetensors helpers. It uses
//! nothing of the crate but [`crate::error`] and [`crate::limits`]; see "Modules and their
//! walls" in the crate docs.

mod atomic;
pub mod geometry;
mod head;
pub mod kind;
mod record;
pub mod settings;
pub mod sources;
pub(crate) mod tensor_file;
#[cfg(test)]
mod walls;

pub use atomic::{is_device_or_pipe, write_atomically};
pub use head::{ClassHead, LinearHead};
pub use record::{BoxRecord, RoiFeature};
