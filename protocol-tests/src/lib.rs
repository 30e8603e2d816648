pub mod apache;
pub mod harness;
pub mod scrape;
pub mod stack;
