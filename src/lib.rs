//! dockhand: a job worker for containers and processes whose graceful
//! shutdown is correct under any signal timing, stuck job or store failure.
//!
//! The decision logic is the pure [`machine`]; everything else turns I/O into
//! its events and performs its actions.

pub mod job;
pub mod machine;
pub mod store;
