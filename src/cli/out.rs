//! Writing to stdout and stderr without ever panicking.
//!
//! `println!` panics when stdout is a closed pipe (`dockhand jobs | head -1`)
//! and `eprintln!` when stderr is. Commands write through [`outln!`], which
//! turns a closed stdout into a quiet end of the command (the reader has all
//! it wanted), and through [`errln!`], which drops what cannot be written: a
//! worker whose stderr is gone keeps working and exits with its true code.

use std::fmt;
use std::io::{self, Write};

use super::CliError;

/// Write one line on stdout.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .map_err(CliError::stdout)
}

/// Write bytes on stdout, as they are.
pub fn bytes(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(CliError::stdout)
}

/// Write one line on stderr; if stderr is gone, nothing is written.
pub fn err_line(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// `println!` that returns a [`CliError`] instead of panicking.
#[macro_export]
#[doc(hidden)]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))?
    };
}

/// `eprintln!` that never panics.
#[macro_export]
#[doc(hidden)]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::err_line(format_args!($($arg)*))
    };
}
