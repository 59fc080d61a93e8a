//! The command line: the contract in DESIGN.md ("Command line").

mod bench;
mod demo;
mod enqueue;
mod output;
mod worker;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::job::JobState;
use crate::store::{AnyStore, Store, DEFAULT_DATABASE_URL};

pub use worker::WorkerArgs;

/// Exit code of a failed command (usage errors exit 2, through clap).
pub const EXIT_FATAL: i32 = 1;

/// dockhand: a job worker for containers and processes with a graceful
/// shutdown you can trust.
#[derive(Debug, Parser)]
#[command(name = "dockhand", version, about, long_about = None)]
pub struct Cli {
    /// Database: postgres://USER:PASS@HOST/DB or sqlite://FILE.
    /// Without it (and without DATABASE_URL), the embedded sqlite://dockhand.db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Log format on stderr; by default text on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database schema (every command also does it).
    Migrate,
    /// Enqueue a job and print its id; or many from a JSON-lines file.
    Enqueue(enqueue::EnqueueArgs),
    /// Run a worker until SIGTERM/SIGINT (drain), a second one (force), a third (kill).
    Worker(WorkerArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job with its history.
    Show(ShowArgs),
    /// Print a job's captured output.
    Logs(IdArg),
    /// Cancel a queued job, or stop a running one.
    Cancel(IdArg),
    /// Queue a failed or cancelled job again.
    Retry(IdArg),
    /// Show the workers of the fleet.
    Status(StatusArgs),
    /// A self-contained tour: six jobs, a worker, a SIGTERM half-way (no server needed).
    Demo,
    /// Measure throughput, latency, shutdown and recovery with no-op jobs.
    Bench(bench::BenchArgs),
}

/// `jobs` options.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: queued, running, succeeded, failed, cancelled.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `show` options.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Job id.
    pub id: i64,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A job id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Job id.
    pub id: i64,
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The workers' --lease: a worker silent for two leases is presumed lost.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,
}

/// Parse `500ms`, `30s`, `2m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500ms, 30s, 2m"))
}

/// A failed command: one line for the user.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(error: E) -> Self {
        CliError(error.to_string())
    }
}

/// Open and migrate the store the flags name.
pub async fn open_store(url: Option<&str>) -> Result<AnyStore, CliError> {
    let url = url.unwrap_or(DEFAULT_DATABASE_URL);
    let store = AnyStore::open(url).await?;
    store.migrate().await?;
    Ok(store)
}

/// Run a parsed command that needs a runtime; the exit code.
pub async fn run(
    cli: Cli,
    watchdog: Option<crate::executor::watchdog::Watchdog>,
) -> Result<i32, CliError> {
    if let Command::Demo = cli.command {
        return demo::run(watchdog).await;
    }
    let store = open_store(cli.database_url.as_deref()).await?;
    match cli.command {
        Command::Migrate => {
            println!("database schema is up to date");
            Ok(0)
        }
        Command::Enqueue(args) => enqueue::run(&store, args).await,
        Command::Worker(args) => worker::run(store, args, watchdog).await,
        Command::Jobs(args) => output::jobs(&store, args).await,
        Command::Show(args) => output::show(&store, args).await,
        Command::Logs(args) => output::logs(&store, args).await,
        Command::Cancel(args) => output::cancel(&store, args).await,
        Command::Retry(args) => output::retry(&store, args).await,
        Command::Status(args) => output::status(&store, args).await,
        Command::Demo => Ok(0),
        Command::Bench(args) => {
            let url = cli.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL);
            bench::run(&store, url, args).await
        }
    }
}
