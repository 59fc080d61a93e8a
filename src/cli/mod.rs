//! The command line. README.md lists every command and flag; the exit codes
//! are the constants below.

mod bench;
mod demo;
mod enqueue;
pub mod out;
mod output;
mod schedule;
mod ui;
mod worker;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::job::JobState;
use crate::store::{AnyStore, BulkAction, Store, StoreError, DEFAULT_DATABASE_URL};

pub use worker::WorkerArgs;

/// The parsers of text the command line takes from users (flag values,
/// `enqueue --from-file` lines): each returns a value within its bounds or
/// one line of error. Public for the fuzz targets, and for embedders that
/// take the same input.
pub mod parse {
    pub use super::enqueue::{
        parse_at, parse_cpus, parse_env, parse_line, parse_memory, parse_pids,
    };
    pub use super::schedule::{parse_cron, CronText};
    pub use super::worker::{parse_retention, Retention};
    pub use super::{parse_duration, MAX_DURATION};
}

/// Exit code of a failed command (usage errors exit 2, through clap).
pub const EXIT_FATAL: i32 = 1;
/// Exit code of a usage error (a bad flag or value).
pub const EXIT_USAGE: i32 = 2;

/// Examples and exit codes, under `dockhand --help`.
const AFTER_HELP: &str = "\
Examples:
  dockhand enqueue -- sh -c 'echo hello'           a job (prints its id)
  dockhand enqueue --image alpine:3 --at 2026-12-01T09:00:00Z -- ./report
  dockhand worker --concurrency 8 --http 0.0.0.0:9090
  dockhand jobs --state failed
  dockhand retry --state failed --older-than 1h --dry-run
  dockhand pause emails; dockhand resume emails
  dockhand schedule add nightly --cron '0 3 * * *' -- ./backup.sh

Exit codes:
  0   success (a worker: every job running at the signal finished on its own)
  1   the command failed
  2   usage error (a bad flag or value)
  66  not found (a job, a schedule)
  75  a worker stopped with jobs interrupted and requeued (nothing lost)
  78  configuration error (database URL, schema newer than this build)

Database: --database-url, DATABASE_URL, --database-url-file or
DATABASE_URL_FILE; default sqlite://dockhand.db. Linux only.";

/// dockhand: a job worker for containers and processes with a graceful
/// shutdown you can trust.
#[derive(Debug, Parser)]
#[command(
    name = "dockhand",
    version,
    about,
    long_about = None,
    arg_required_else_help = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Database: postgres://USER:PASS@HOST/DB or sqlite://FILE. Prefer the
    /// DATABASE_URL variable or --database-url-file: a password on the
    /// command line is visible to every local user. Without any, the
    /// embedded sqlite://dockhand.db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// A file holding the database URL (a Kubernetes or Docker secret).
    #[arg(
        long,
        env = "DATABASE_URL_FILE",
        global = true,
        value_name = "FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<std::path::PathBuf>,

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
    Migrate(JsonArg),
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
    /// Cancel queued jobs, or stop running ones: by id, or every job a
    /// filter selects.
    Cancel(BulkArgs),
    /// Queue failed or cancelled jobs again: by id, or every job a filter
    /// selects.
    Retry(BulkArgs),
    /// Per queue: ready, scheduled, running and finished jobs, whether it
    /// is paused, and the age of its oldest ready job.
    Queues(JsonArg),
    /// Pause a queue: workers claim nothing from it until it is resumed
    /// (running jobs go on; enqueue still works).
    Pause(QueueArg),
    /// Resume a paused queue.
    Resume(QueueArg),
    /// Print a shell completion script: bash, zsh, fish, elvish, powershell.
    Completions(CompletionsArgs),
    /// Print the man page (roff): `dockhand man > dockhand.1`.
    Man,
    /// Delete finished jobs and their history (workers also do it: see
    /// `worker --retain`).
    Prune(PruneArgs),
    /// Periodic jobs: add, list, remove.
    Schedule {
        /// What to do.
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Show the workers of the fleet.
    Status(StatusArgs),
    /// A self-contained tour: six jobs, a worker, a SIGTERM half-way (no server needed).
    Demo,
    /// Measure throughput, latency, shutdown and recovery with no-op jobs.
    Bench(bench::BenchArgs),
    /// Serve the web dashboard (127.0.0.1:8080 by default; any other
    /// address needs DOCKHAND_UI_TOKEN or --token-file).
    Ui(ui::UiArgs),
}

/// A state to filter on: a stored state, or `scheduled` (queued, due later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFilter {
    /// Jobs in this state.
    State(JobState),
    /// Queued jobs whose run time is still to come.
    Scheduled,
}

impl std::str::FromStr for StateFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "scheduled" {
            return Ok(StateFilter::Scheduled);
        }
        text.parse().map(StateFilter::State).map_err(|_| {
            format!(
                "unknown state {text:?}; use queued, scheduled, running, succeeded, failed or cancelled"
            )
        })
    }
}

/// `jobs` options.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: queued, scheduled (queued, due later),
    /// running, succeeded, failed, cancelled.
    #[arg(long)]
    pub state: Option<StateFilter>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs whose command holds this text (ASCII case ignored).
    #[arg(long, value_name = "TEXT")]
    pub command: Option<String>,
    /// Only jobs with a smaller id: the next page after one that ended
    /// with this id.
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
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

/// `--json` alone.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A queue name.
#[derive(Debug, Args)]
pub struct QueueArg {
    /// The queue.
    pub queue: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `prune` options.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Jobs that finished longer ago than this.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub older_than: Duration,
    /// Only this state (repeatable): succeeded, failed, cancelled (default:
    /// all three).
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<JobState>,
    /// Count them; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cancel` and `retry`: ids, or a filter.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// Job ids.
    #[arg(value_name = "ID", required_unless_present_any = ["state", "queue", "older_than"])]
    pub ids: Vec<i64>,
    /// Every job in this state (cancel: queued, which includes scheduled
    /// jobs, or running; retry: failed or cancelled).
    #[arg(long, conflicts_with = "ids")]
    pub state: Option<StateFilter>,
    /// Every job of this queue (in the states the action applies to).
    #[arg(long, conflicts_with = "ids")]
    pub queue: Option<String>,
    /// Only jobs that entered their state longer ago than this (finished
    /// jobs by when they finished, running ones by their claim, queued ones
    /// by when they became due).
    #[arg(long, value_parser = parse_duration, value_name = "DUR", conflicts_with = "ids")]
    pub older_than: Option<Duration>,
    /// Count the jobs the filter selects; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A worker silent for two of its leases is presumed lost; this lease is
    /// assumed for workers that announced none (older versions).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,
}

/// Longest duration any flag or job field accepts: every deadline computed
/// from one stays far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parse `500ms`, `30s`, `2m`, `1h 30m` (at most ten years).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500ms, 30s, 2m"))?;
    if duration > MAX_DURATION {
        return Err(format!("duration {text:?} is too long (at most ten years)"));
    }
    Ok(duration)
}

/// A failed command: one line for the user, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, in one line (empty: say nothing).
    pub message: String,
    /// The process exit code.
    pub code: i32,
}

impl CliError {
    /// A command that failed (exit 1).
    pub fn fatal(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_FATAL,
        }
    }

    /// A bad value the parser could not catch (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    /// Writing to stdout failed. A closed pipe means the reader has what it
    /// wanted (`dockhand jobs | head -1`): the command ends quietly with 0.
    pub fn stdout(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            CliError {
                message: String::new(),
                code: 0,
            }
        } else {
            CliError::fatal(format!("cannot write to standard output: {error}"))
        }
    }
}

/// Exit code when a job (or another thing named) does not exist (EX_NOINPUT).
pub const EXIT_NOT_FOUND: i32 = 66;
/// Exit code of a configuration error: a database URL that cannot be used,
/// a schema newer than this build (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

impl From<crate::machine::ConfigError> for CliError {
    fn from(error: crate::machine::ConfigError) -> Self {
        CliError::usage(format!("invalid worker configuration: {error}"))
    }
}

/// A JSON document as pretty text (a `Value` always renders; the error is
/// kept for the type's sake).
pub(crate) fn json_text(value: &serde_json::Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::fatal(format!("cannot render JSON: {e}")))
}

impl From<StoreError> for CliError {
    fn from(error: StoreError) -> Self {
        let code = match &error {
            StoreError::NotFound(_) => EXIT_NOT_FOUND,
            StoreError::BadUrl { .. } | StoreError::SchemaTooNew { .. } => EXIT_CONFIG,
            _ => EXIT_FATAL,
        };
        CliError {
            message: error.to_string(),
            code,
        }
    }
}

/// Longest database URL file read.
const MAX_URL_FILE: u64 = 4096;

impl Cli {
    /// The database URL: from `--database-url`/`DATABASE_URL`, or read from
    /// `--database-url-file`/`DATABASE_URL_FILE` (one line, trimmed).
    pub fn resolved_database_url(&self) -> Result<Option<String>, CliError> {
        let Some(path) = &self.database_url_file else {
            return Ok(self.database_url.clone());
        };
        let shown = path.display();
        let config = |why: String| CliError {
            message: why,
            code: EXIT_CONFIG,
        };
        let file = std::fs::File::open(path)
            .map_err(|e| config(format!("cannot read the database URL file {shown}: {e}")))?;
        let mut text = String::new();
        use std::io::Read;
        file.take(MAX_URL_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| config(format!("cannot read the database URL file {shown}: {e}")))?;
        if text.len() as u64 > MAX_URL_FILE {
            return Err(config(format!(
                "the database URL file {shown} is over {MAX_URL_FILE} bytes"
            )));
        }
        let url = text.trim();
        if url.is_empty() || url.contains('\n') {
            return Err(config(format!(
                "the database URL file {shown} must hold one URL on one line"
            )));
        }
        Ok(Some(url.to_string()))
    }
}

/// Whether the database URL was given with a password on the command line,
/// where every local user can read it in the process list.
pub fn password_on_command_line(cli: &Cli) -> bool {
    let on_line =
        std::env::args().any(|a| a == "--database-url" || a.starts_with("--database-url="));
    on_line
        && cli
            .database_url
            .as_deref()
            .is_some_and(|url| crate::redact::redact_url(url) != url)
}

/// Open and migrate a store that must exist already (SQLite: the file).
pub async fn open_existing_store(url: Option<&str>) -> Result<AnyStore, CliError> {
    let url = url.unwrap_or(DEFAULT_DATABASE_URL);
    let store = AnyStore::open_existing(url).await?;
    store.migrate().await?;
    Ok(store)
}

/// `completions SHELL`.
fn completions(shell: clap_complete::Shell) -> Result<i32, CliError> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dockhand", &mut script);
    out::bytes(&script)?;
    Ok(0)
}

/// `man`.
fn man_page() -> Result<i32, CliError> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| CliError::fatal(format!("cannot render the man page: {e}")))?;
    out::bytes(&page)?;
    Ok(0)
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
    // A worker runs for long: warn once at its start (a one-shot command
    // keeps its one-line output).
    if matches!(cli.command, Command::Worker(_)) && password_on_command_line(&cli) {
        crate::errln!(
            "dockhand: warning: the database password is on the command line, where every local user can read it; use DATABASE_URL or --database-url-file"
        );
    }
    let url = cli.resolved_database_url()?;
    let url = url.as_deref();
    let args = match cli.command {
        Command::Demo => return demo::run(watchdog).await,
        Command::Completions(args) => return completions(args.shell),
        Command::Man => return man_page(),
        Command::Worker(args) => {
            // Signal handlers before anything slow: a TERM while connecting
            // or migrating is handled (a prompt exit 0: nothing was
            // claimed), never the default action that kills the process.
            let mut signals = worker::signal_source()?;
            let store = tokio::select! {
                biased;
                signal = worker::startup_signal(&mut signals) => {
                    crate::errln!("dockhand: {signal} while starting: exiting before any claim");
                    return Ok(0);
                }
                store = open_store(url) => store?,
            };
            return worker::run(store, args, watchdog, signals).await;
        }
        other => other,
    };
    // Commands that only read never create a database: a mistyped SQLite
    // path is an error, not a new empty file.
    let read_only = matches!(
        args,
        Command::Jobs(_)
            | Command::Show(_)
            | Command::Logs(_)
            | Command::Status(_)
            | Command::Queues(_)
            | Command::Ui(_)
            | Command::Schedule {
                command: schedule::ScheduleCommand::List(_)
            }
    );
    let store = if read_only {
        open_existing_store(url).await?
    } else {
        open_store(url).await?
    };
    match args {
        Command::Migrate(args) => {
            if args.json {
                crate::outln!(
                    "{}",
                    json_text(
                        &serde_json::json!({ "schema_version": crate::store::SCHEMA_VERSION })
                    )?
                );
            } else {
                crate::outln!(
                    "database schema is up to date (version {})",
                    crate::store::SCHEMA_VERSION
                );
            }
            Ok(0)
        }
        Command::Enqueue(args) => enqueue::run(&store, args).await,
        Command::Jobs(args) => output::jobs(&store, args).await,
        Command::Show(args) => output::show(&store, args).await,
        Command::Logs(args) => output::logs(&store, args).await,
        Command::Cancel(args) => output::bulk(&store, BulkAction::Cancel, args).await,
        Command::Retry(args) => output::bulk(&store, BulkAction::Retry, args).await,
        Command::Queues(args) => output::queues(&store, args).await,
        Command::Pause(args) => output::pause(&store, &args, true).await,
        Command::Resume(args) => output::pause(&store, &args, false).await,
        Command::Schedule { command } => schedule::run(&store, command).await,
        Command::Prune(args) => output::prune(&store, args).await,
        Command::Status(args) => output::status(&store, args).await,
        Command::Bench(args) => bench::run(&store, url.unwrap_or(DEFAULT_DATABASE_URL), args).await,
        Command::Ui(args) => ui::run(store, url.unwrap_or(DEFAULT_DATABASE_URL), args).await,
        Command::Demo | Command::Worker(_) | Command::Completions(_) | Command::Man => Ok(0),
    }
}
