//! dockhand: a job worker for containers and processes whose graceful
//! shutdown is correct under any signal timing, stuck job or store failure.
//!
//! The decision logic is the pure [`machine`]; the [`shell`] turns I/O into
//! its events and performs its actions through a [`store::Store`] and an
//! [`executor::Executor`]. `docs/ARCHITECTURE.md` walks through the layers.
//!
//! Features (all on by default): `cli` (the `dockhand` binary's commands),
//! `http` (health, readiness, Prometheus metrics), `docker` (container jobs).
//! An application embedding a worker ([`embed`]) can build with
//! `default-features = false` and compiles none of them.
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod embed;
pub mod executor;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
pub mod machine;
#[cfg(feature = "http")]
pub mod metrics;
pub mod pid1;
pub mod redact;
pub mod shell;
pub mod store;
