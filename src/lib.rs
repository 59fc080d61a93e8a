//! dockhand: a job worker for containers and processes whose graceful
//! shutdown is correct under any signal timing, stuck job or store failure.
//!
//! The decision logic is the pure [`machine`]; the [`shell`] turns I/O into
//! its events and performs its actions through a [`store::Store`] and an
//! [`executor::Executor`].

pub mod cli;
pub mod embed;
pub mod executor;
pub mod http;
pub mod job;
pub mod machine;
pub mod metrics;
pub mod pid1;
pub mod redact;
pub mod shell;
pub mod store;
