//! `dockhand enqueue`: one job from flags, or many from a JSON-lines file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::{parse_duration, CliError};
use crate::job::{JobSpec, NewJob};
use crate::store::{validate, AnyStore, Enqueued, Store, StoreError, MAX_SPEC_BYTES};

/// What a job is and how it runs: shared by `enqueue` and `schedule add`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Queue to put the job on.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Run the command in a container of this image instead of a local process.
    #[arg(long)]
    pub image: Option<String>,
    /// Stop the job (a failed attempt) when it runs longer than this.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Runs that may fail before the job is `failed`.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Container memory limit, e.g. 256m or 1g (image jobs; default: the worker's).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Container CPU limit, e.g. 0.5 (image jobs; default: the worker's).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u32>,
    /// Container process limit, at least 1 (image jobs; default: the worker's).
    #[arg(long, value_parser = parse_pids)]
    pub pids: Option<u32>,
    /// Environment variable for the job (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

impl JobArgs {
    /// The job these flags describe, running `command` now.
    pub fn into_job(self, command: Vec<String>) -> NewJob {
        NewJob {
            queue: self.queue,
            spec: JobSpec {
                command,
                image: self.image,
                env: self.env.into_iter().collect(),
                timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
                memory_bytes: self.memory,
                cpu_millis: self.cpus,
                pids: self.pids,
            },
            priority: self.priority,
            max_attempts: self.max_attempts,
            delay: Duration::ZERO,
            run_at: None,
            unique_key: None,
        }
    }
}

/// `enqueue` options.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job.
    #[command(flatten)]
    pub job: JobArgs,
    /// Not before this long from now.
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Not before this time: RFC 3339, e.g. 2026-12-01T09:00:00Z or
    /// 2026-12-01T10:00:00+01:00 (until then the job is `scheduled`).
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<i64>,
    /// While a job with this key is queued or running, enqueue nothing and
    /// print that job's id instead (exit 0; stderr says it already existed).
    #[arg(long, value_name = "KEY")]
    pub unique_key: Option<String>,
    /// Enqueue every line of this JSON-lines file, all or nothing (one
    /// transaction, read in chunks: up to 10,000,000 jobs), and print their
    /// ids: {"command": ["sh","-c","..."], "queue", "image", "timeout",
    /// "max_attempts", "priority", "delay", "at", "unique_key",
    /// "env": {"K": "V"}, "memory", "cpus", "pids"}; only "command" is
    /// required.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "command")]
    pub from_file: Option<PathBuf>,
    /// Print {"jobs": [{"id", "existed"}]} instead of one id a line.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", required_unless_present = "from_file")]
    pub command: Vec<String>,
}

/// `512m`, `1g`, `64k` or bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let factor: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("invalid memory size {text:?}; use e.g. 256m or 1g")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid memory size {text:?}; use e.g. 256m or 1g"))?;
    match value.checked_mul(factor) {
        Some(bytes) if bytes > crate::store::MAX_JOB_MEMORY => {
            Err(format!("memory size {text:?} is too large (at most 1t)"))
        }
        Some(bytes) if bytes >= crate::store::MIN_JOB_MEMORY => Ok(bytes),
        Some(_) => Err(format!(
            "memory limit {text:?} is below Docker's minimum of 6m (a limit cannot be turned off)"
        )),
        None => Err(format!("memory size {text:?} is too large")),
    }
}

/// A container process limit: 1 or more (Docker reads 0 as "no limit").
pub fn parse_pids(text: &str) -> Result<u32, String> {
    let pids: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid process limit {text:?}; use a whole number, e.g. 256"))?;
    crate::store::check_pids(pids)?;
    Ok(pids)
}

/// An RFC 3339 time (any offset), as unix milliseconds.
pub fn parse_at(text: &str) -> Result<i64, String> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("invalid time {text:?} ({e}); use RFC 3339, e.g. 2026-12-01T09:00:00Z")
    })?;
    let ms = at.timestamp_millis();
    if !(0..=crate::store::MAX_RUN_AT_MS).contains(&ms) {
        return Err(format!("time {text:?} must be between 1970 and 9999"));
    }
    Ok(ms)
}

/// `0.5`, `2`: CPUs, as thousandths.
pub fn parse_cpus(text: &str) -> Result<u32, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {text:?}; use e.g. 0.5 or 2"))?;
    if !(0.01..=1024.0).contains(&cpus) {
        return Err(format!("CPU count {text:?} must be between 0.01 and 1024"));
    }
    Ok((cpus * 1000.0).round() as u32)
}

/// `KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// One line of a `--from-file` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    command: Vec<String>,
    queue: Option<String>,
    image: Option<String>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    priority: Option<i32>,
    delay: Option<String>,
    at: Option<String>,
    unique_key: Option<String>,
    env: Option<BTreeMap<String, String>>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u32>,
}

impl Line {
    fn into_job(self) -> Result<NewJob, String> {
        let timeout = self.timeout.as_deref().map(parse_duration).transpose()?;
        let delay = self.delay.as_deref().map(parse_duration).transpose()?;
        let at = self.at.as_deref().map(parse_at).transpose()?;
        if at.is_some() && delay.is_some() {
            return Err("\"at\" and \"delay\" exclude each other".into());
        }
        Ok(NewJob {
            queue: self.queue.unwrap_or_else(|| "default".to_string()),
            spec: JobSpec {
                command: self.command,
                image: self.image,
                env: self.env.unwrap_or_default(),
                timeout_ms: timeout.map(|t| t.as_millis() as u64),
                memory_bytes: self.memory.as_deref().map(parse_memory).transpose()?,
                cpu_millis: self.cpus.map(|c| parse_cpus(&c.to_string())).transpose()?,
                pids: self
                    .pids
                    .map(|p| crate::store::check_pids(p).map(|()| p))
                    .transpose()?,
            },
            priority: self.priority.unwrap_or(0),
            max_attempts: self.max_attempts.unwrap_or(3),
            delay: delay.unwrap_or(Duration::ZERO),
            run_at: at,
            unique_key: self.unique_key,
        })
    }
}

/// One line of a `--from-file` file as a job, checked as the store checks
/// it; the error is one line.
pub fn parse_line(line: &str) -> Result<NewJob, String> {
    parse_line_inner(line).map_err(|e| crate::redact::one_line(&e))
}

fn parse_line_inner(line: &str) -> Result<NewJob, String> {
    // serde's messages quote the input as it is (an unknown field's name
    // may hold a newline): the caller makes them one line.
    let parsed: Line = serde_json::from_str(line).map_err(|e| format!("malformed job: {e}"))?;
    let job = parsed.into_job()?;
    validate(&job).map_err(|e| e.to_string())?;
    Ok(job)
}

/// Jobs per chunk handed to the store while a file streams in.
const FILE_CHUNK: usize = 10_000;

/// Longest line a jobs file may hold: a job's spec is at most
/// [`MAX_SPEC_BYTES`]; a line can spell it with escapes.
const MAX_LINE: usize = 16 * MAX_SPEC_BYTES;

/// A JSON-lines file read a chunk at a time, so a file of millions of jobs
/// never sits in memory. A line it cannot use is kept as the error to show
/// (the store rolls back everything read before it).
struct FileChunks {
    reader: BufReader<std::fs::File>,
    shown: String,
    number: usize,
    jobs: usize,
    line: Vec<u8>,
    error: Option<CliError>,
}

impl FileChunks {
    fn open(path: &PathBuf) -> Result<Self, CliError> {
        // One line whatever bytes the path holds.
        let shown = crate::redact::one_line(&path.display().to_string());
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::fatal(format!("cannot read {shown}: {e}")))?;
        Ok(FileChunks {
            reader: BufReader::new(file),
            shown,
            number: 0,
            jobs: 0,
            line: Vec::new(),
            error: None,
        })
    }

    /// The next line's job, `None` at the end of the file.
    fn next_job(&mut self) -> Result<Option<NewJob>, CliError> {
        loop {
            self.line.clear();
            let shown = &self.shown;
            let read = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| {
                    CliError::fatal(format!("{shown}:{}: cannot read: {e}", self.number + 1))
                })?;
            if read == 0 {
                return Ok(None);
            }
            self.number += 1;
            let number = self.number;
            if self.line.len() > MAX_LINE {
                return Err(CliError::fatal(format!(
                    "{shown}:{number}: line longer than {MAX_LINE} bytes"
                )));
            }
            let line = std::str::from_utf8(&self.line)
                .map_err(|e| CliError::fatal(format!("{shown}:{number}: not UTF-8: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let job =
                parse_line(line).map_err(|e| CliError::fatal(format!("{shown}:{number}: {e}")))?;
            self.jobs += 1;
            return Ok(Some(job));
        }
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<NewJob>>, StoreError> {
        let mut chunk = Vec::with_capacity(FILE_CHUNK);
        while chunk.len() < FILE_CHUNK {
            match self.next_job() {
                Ok(Some(job)) => chunk.push(job),
                Ok(None) => break,
                Err(e) => {
                    self.error = Some(e);
                    return Err(StoreError::InvalidJob("a line of the file".into()));
                }
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

/// Enqueue a whole file in one transaction, streaming it.
async fn enqueue_file(
    store: &AnyStore,
    path: &PathBuf,
) -> Result<(Vec<Enqueued>, Vec<(usize, String)>), CliError> {
    let mut file = FileChunks::open(path)?;
    // Only the unique keys are kept (by line), for the messages about
    // jobs that already existed.
    let mut keys = Vec::new();
    let mut seen = 0;
    let mut next = || {
        let chunk = file.next_chunk()?;
        for job in chunk.iter().flatten() {
            if let Some(key) = &job.unique_key {
                keys.push((seen, key.clone()));
            }
            seen += 1;
        }
        Ok(chunk)
    };
    let result = store.enqueue_stream(&mut next).await;
    if let Some(error) = file.error.take() {
        return Err(error);
    }
    let answers = result?;
    if file.jobs == 0 {
        return Err(CliError::fatal(format!(
            "{}: no jobs in the file",
            file.shown
        )));
    }
    Ok((answers, keys))
}

/// Print the ids (one per line, or `{"jobs": [{"id", "existed"}]}`) in
/// blocks, so a million answers cost neither a million writes nor a
/// document built in memory; stderr names each job that already existed.
fn print_answers(
    answers: &[Enqueued],
    keys: &[(usize, String)],
    json: bool,
) -> Result<(), CliError> {
    use std::fmt::Write as _;
    let mut text = String::new();
    if json {
        text.push_str("{\n  \"jobs\": [");
    }
    for (i, answer) in answers.iter().enumerate() {
        // Writing into a String cannot fail.
        let _ = if json {
            let comma = if i == 0 { "" } else { "," };
            write!(
                text,
                "{comma}\n    {{\n      \"id\": {},\n      \"existed\": {}\n    }}",
                answer.id, answer.existed
            )
        } else {
            writeln!(text, "{}", answer.id)
        };
        if answer.existed {
            let key = keys
                .binary_search_by_key(&i, |(index, _)| *index)
                .map(|at| keys[at].1.as_str())
                .unwrap_or_default();
            crate::errln!(
                "dockhand: job {} already exists with unique key {key:?}: nothing enqueued",
                answer.id
            );
        }
        if text.len() >= 64 * 1024 {
            super::out::bytes(text.as_bytes())?;
            text.clear();
        }
    }
    if json {
        text.push_str(if answers.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
    }
    super::out::bytes(text.as_bytes())
}

/// Enqueue and print the ids, one per line.
pub async fn run(store: &AnyStore, args: EnqueueArgs) -> Result<i32, CliError> {
    let (answers, keys) = match &args.from_file {
        Some(path) => enqueue_file(store, path).await?,
        None => {
            let job = NewJob {
                delay: args.delay.unwrap_or(Duration::ZERO),
                run_at: args.at,
                unique_key: args.unique_key,
                ..args.job.into_job(args.command)
            };
            let keys = job
                .unique_key
                .clone()
                .map(|key| (0, key))
                .into_iter()
                .collect();
            (store.enqueue(std::slice::from_ref(&job)).await?, keys)
        }
    };
    print_answers(&answers, &keys, args.json)?;
    Ok(0)
}
