//! The `dockhand` binary: parse, start the watchdog (worker only), run.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Parser;
use dockhand::cli::{self, Cli, Command, LogFormat, EXIT_FATAL, EXIT_USAGE};
use dockhand::errln;
use dockhand::executor::shim;
use dockhand::executor::watchdog::Watchdog;
use tracing_subscriber::EnvFilter;

/// The log's stderr: a write that fails (stderr closed) is dropped, never
/// reported, so a worker without a reader keeps working. (tracing-subscriber
/// reports a failed write with `eprint!`, which panics on a closed stderr.)
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(format: Option<LogFormat>, quiet: bool) {
    let default = if quiet {
        "warn,sqlx=error"
    } else {
        "info,sqlx=warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(|| QuietStderr);
    let text = format
        .map(|f| f == LogFormat::Text)
        .unwrap_or_else(|| std::io::stderr().is_terminal());
    if text {
        builder.compact().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// A command given without `--` (`dockhand enqueue echo hi`): clap sees an
/// unexpected argument and gives no tip, so say where the command goes.
fn command_tip(error: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument || args.iter().any(|a| a == "--") {
        return None;
    }
    let usage = if args.iter().any(|a| a == "schedule") {
        "dockhand schedule add NAME --cron EXPR [OPTIONS] --"
    } else if args.iter().any(|a| a == "enqueue") {
        "dockhand enqueue [OPTIONS] --"
    } else {
        return None;
    };
    let Some(ContextValue::String(word)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    (!word.starts_with('-'))
        .then(|| format!("a job's command goes after `--`, e.g. `{usage} {word} ...`"))
}

fn usage_error(line: &str) -> ! {
    errln!("dockhand: error: {line} (see dockhand --help)");
    std::process::exit(EXIT_USAGE);
}

fn main() {
    // As a job's shim, dockhand does only that (see executor::shim).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == shim::SHIM_ARG) {
        shim::run(&args[2..]);
    }
    // Nobody but root may read this process's memory, environment or open
    // files through /proc: not a job running as the same user, not another
    // local user. (Inherited by the watchdog and the PID 1 supervisor.)
    // SAFETY: plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error)
            if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // Bare `dockhand`: the help itself, on stderr, exit 2.
            let mut help = error.render().to_string();
            if !help.ends_with('\n') {
                help.push('\n');
            }
            let _ = std::io::Write::write_all(&mut std::io::stderr(), help.as_bytes());
            std::process::exit(EXIT_USAGE);
        }
        Err(error) => {
            // One line naming the problem; the full usage is one --help away.
            let rendered = error.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines
                .next()
                .unwrap_or("invalid usage")
                .trim_start_matches("error: ")
                .to_string();
            // "the following required arguments were not provided:" names them on the next line.
            if line.ends_with(':') {
                if let Some(next) = lines.next() {
                    line = format!("{line} {next}");
                }
            }
            // clap's tips (e.g. "to pass 'echo' as a value, use '-- echo'")
            // stay, on the same line.
            for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
                line = format!("{line}; tip: {tip}");
            }
            if let Some(tip) = command_tip(&error, &args) {
                line = format!("{line}; tip: {tip}");
            }
            usage_error(&line);
        }
    };
    if let Command::Worker(args) = &cli.command {
        if let Err(error) = args.machine_config().validate() {
            usage_error(&format!("invalid worker configuration: {error}"));
        }
    }
    // The demo tells its own story; the worker's logs would drown it.
    init_logging(
        cli.log_format,
        matches!(cli.command, Command::Demo | Command::Bench(_)),
    );
    let supervised = matches!(cli.command, Command::Worker(_) | Command::Demo);
    if supervised {
        // SAFETY: no thread exists yet; the runtime is built below.
        if let Err(error) = unsafe { dockhand::pid1::supervise_if_pid1() } {
            errln!("dockhand: error: cannot start as PID 1: {error}");
            std::process::exit(EXIT_FATAL);
        }
    }
    let watchdog = if supervised {
        // SAFETY: no thread exists yet; the runtime is built below.
        match unsafe { Watchdog::spawn() } {
            Ok(watchdog) => Some(watchdog),
            Err(error) => {
                errln!("dockhand: error: cannot start the process watchdog: {error}");
                std::process::exit(EXIT_FATAL);
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("dockhand: error: cannot start the runtime: {error}");
            std::process::exit(EXIT_FATAL);
        }
    };
    let code = match runtime.block_on(cli::run(cli, watchdog)) {
        Ok(code) => code,
        Err(error) => {
            if !error.message.is_empty() {
                errln!(
                    "dockhand: error: {}",
                    dockhand::redact::one_line(&dockhand::redact::redact_text(&error.message))
                );
            }
            error.code
        }
    };
    // Store calls still in flight after the exit decision are abandoned.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
