pub mod apache;
pub mod harness;
pub mod stack;
