pub mod apache;
pub mod harness;
