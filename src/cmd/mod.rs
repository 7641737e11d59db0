//! The operator commands: `plan`, `status` and `doctor`. Each reads facts,
//! asks the pure model, and prints; none of them writes a file.

pub mod doctor;
pub mod plan;
pub mod status;
