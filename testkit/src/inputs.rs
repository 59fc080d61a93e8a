//! Checks on input nobody vouches for: the lines of `enqueue --from-file`,
//! the values of flags, database URLs, and rows of a database someone edited
//! by hand. Each check panics when dockhand mishandles its input (a panic
//! inside dockhand, an error of more than one line, a secret in a message,
//! a value accepted past its bound). The fuzz targets in `fuzz/` call them
//! with arbitrary bytes; `tests/fuzz_corpus.rs` replays the saved corpora on
//! the stable toolchain.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use arbitrary::Unstructured;
use dockhand::cli::parse::{
    parse_at, parse_cpus, parse_cron, parse_duration, parse_env, parse_line, parse_memory,
    parse_pids, parse_retention, MAX_DURATION,
};
use dockhand::job::{Completion, JobId, JobSpec, Lease, NewJob, Outcome, Phase};
use dockhand::redact::{redact_text, redact_url};
use dockhand::store::{
    AnyStore, ClaimRequest, JobFilter, Schedule, SqliteStore, Store, WorkerInfo, WorkerStop,
};

fn one_line(what: &str, input: &str, message: &str) {
    assert!(
        !message.contains(['\n', '\r']),
        "{what}({input:?}) gave an error of more than one line: {message:?}"
    );
}

/// A line of `enqueue --from-file`: either one clear line of error, or a job
/// the store accepts whose spec survives the JSON the store keeps it in.
pub fn enqueue_line(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_line(text) {
        Ok(job) => {
            if let Err(e) = dockhand::store::validate(&job) {
                panic!("parse_line({text:?}) accepted a job the store refuses: {e}");
            }
            let json = serde_json::to_string(&job.spec)
                .unwrap_or_else(|e| panic!("the spec of {text:?} does not serialize: {e}"));
            let back: JobSpec = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("the spec of {text:?} does not read back: {e}"));
            assert_eq!(
                back, job.spec,
                "the spec of {text:?} changed on its way through JSON"
            );
        }
        Err(message) => one_line("parse_line", text, &message),
    }
}

/// Every flag value parser: no panic, one line of error, bounds kept.
pub fn parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    match parse_duration(text) {
        Ok(d) => assert!(
            d <= MAX_DURATION,
            "parse_duration({text:?}) = {d:?}, past the bound"
        ),
        Err(e) => one_line("parse_duration", text, &e),
    }
    match parse_retention(text) {
        Ok(r) => assert!(
            r.0.is_none_or(|d| d >= Duration::from_secs(1) && d <= MAX_DURATION),
            "parse_retention({text:?}) = {r:?}, out of bounds"
        ),
        Err(e) => one_line("parse_retention", text, &e),
    }
    match parse_memory(text) {
        Ok(bytes) => assert!(
            dockhand::store::check_memory(bytes).is_ok(),
            "parse_memory({text:?}) = {bytes}, which the store refuses"
        ),
        Err(e) => one_line("parse_memory", text, &e),
    }
    match parse_pids(text) {
        Ok(pids) => assert!(pids >= 1, "parse_pids({text:?}) = 0"),
        Err(e) => one_line("parse_pids", text, &e),
    }
    match parse_cpus(text) {
        Ok(millis) => assert!(
            dockhand::store::check_cpu(millis).is_ok(),
            "parse_cpus({text:?}) = {millis}, which the store refuses"
        ),
        Err(e) => one_line("parse_cpus", text, &e),
    }
    match parse_at(text) {
        Ok(ms) => assert!(
            (0..=dockhand::store::MAX_RUN_AT_MS).contains(&ms),
            "parse_at({text:?}) = {ms}, out of bounds"
        ),
        Err(e) => one_line("parse_at", text, &e),
    }
    if let Err(e) = parse_env(text) {
        one_line("parse_env", text, &e);
    }
    if let Err(e) = parse_cron(text) {
        one_line("parse_cron", text, &e);
    }
}

/// Database URLs: checking one never panics, its error is one line, and no
/// message (the checked URL's error, a redacted URL, a redacted error text)
/// shows the password.
pub fn urls(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let scheme = match u.int_in_range(0..=4u8).unwrap_or(0) {
        0 => "postgres",
        1 => "postgresql",
        2 => "sqlite",
        3 => "memory",
        _ => "mysql",
    };
    let part = |u: &mut Unstructured| -> String {
        let text: String = u.arbitrary().unwrap_or_default();
        // Whitespace and quotes end a URL inside a text: the parts stay one token.
        text.chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .collect()
    };
    let (user, host, rest) = (part(&mut u), part(&mut u), part(&mut u));
    let password: String = part(&mut u)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let raw = String::from_utf8_lossy(u.take_rest()).into_owned();
    let _ = redact_url(&raw);
    let _ = redact_text(&raw);
    if let Err(e) = AnyStore::check_url(&raw) {
        one_line("check_url", &raw, &e.to_string());
    }
    let url = format!("{scheme}://{user}:{password}@{host}{rest}");
    if password.len() < 4 {
        return;
    }
    // The password may occur in text that is not it (the scheme, a fixed
    // message such as "sqlite://FILE"): it leaks only where it shows more
    // often than for a twin URL whose password has the same length and
    // kind of characters (so it parses alike) but other letters.
    let other = if password.starts_with('x') { 'y' } else { 'x' };
    let twin_password: String = std::iter::repeat_n(other, password.len()).collect();
    let twin = format!("{scheme}://{user}:{twin_password}@{host}{rest}");
    let leaks = |what: &str, shown: &str, baseline: &str| {
        assert!(
            shown.matches(&password).count() <= baseline.matches(&password).count(),
            "{what}({url:?}) = {shown:?} shows the password"
        );
    };
    leaks("redact_url", &redact_url(&url), &redact_url(&twin));
    let message = |url: &str| format!("cannot connect to {url}: refused");
    leaks(
        "redact_text",
        &redact_text(&message(&url)),
        &redact_text(&message(&twin)),
    );
    let error = |url: &str| AnyStore::check_url(url).err().map(|e| e.to_string());
    if let Some(shown) = error(&url) {
        one_line("check_url", &url, &shown);
        leaks("check_url", &shown, &error(&twin).unwrap_or_default());
    }
}

/// A SQLite database whose rows the fuzzer edits behind the store's back,
/// then reads through every query the store has: each answer must be a
/// value or an error, never a panic (a hand-edited or damaged database, or
/// a row written by a newer version).
pub struct Rows {
    runtime: tokio::runtime::Runtime,
    store: SqliteStore,
    raw: sqlx::SqlitePool,
    tables: Vec<(String, Vec<String>)>,
    path: std::path::PathBuf,
}

impl Drop for Rows {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl Rows {
    /// A fresh database with a few jobs in every state, workers, a stop
    /// record, a schedule and a paused queue.
    pub fn new() -> Rows {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("no runtime: {e}"));
        let path =
            std::env::temp_dir().join(format!("dockhand-fuzz-rows-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let url = format!("sqlite://{}", path.display());
        let (store, raw, tables) = runtime.block_on(async {
            let store = SqliteStore::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
            store.migrate().await.unwrap_or_else(|e| panic!("{e}"));
            fixture(&store).await;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .unwrap_or_else(|e| panic!("{e}"))
                .foreign_keys(false);
            let raw = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let names: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
            )
            .fetch_all(&raw)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let mut tables = Vec::new();
            for (name,) in names {
                let columns: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT name FROM pragma_table_info('{name}') ORDER BY cid"))
                        .fetch_all(&raw)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query(&format!("CREATE TABLE \"fuzz_saved_{name}\" AS SELECT * FROM \"{name}\""))
                    .execute(&raw)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                tables.push((name, columns.into_iter().map(|(c,)| c).collect()));
            }
            (store, raw, tables)
        });
        Rows {
            runtime,
            store,
            raw,
            tables,
            path,
        }
    }

    /// Apply the edits `data` describes, read everything, put the rows back.
    pub fn check(&self, data: &[u8]) {
        let mut u = Unstructured::new(data);
        self.runtime.block_on(async {
            let edits = u.int_in_range(1..=4u8).unwrap_or(1);
            for _ in 0..edits {
                let Ok((table, columns)) = u.choose(&self.tables) else {
                    break;
                };
                let Ok(column) = u.choose(columns) else {
                    break;
                };
                let which = u.int_in_range(0..=3u8).unwrap_or(0);
                let row = if which == 0 {
                    String::new()
                } else {
                    format!(" WHERE rowid = (SELECT rowid FROM \"{table}\" ORDER BY rowid LIMIT 1 OFFSET {})", which - 1)
                };
                let sql = format!("UPDATE \"{table}\" SET \"{column}\" = ?{row}");
                let query = sqlx::query(&sql);
                let query = match u.int_in_range(0..=6u8).unwrap_or(0) {
                    0 => query.bind(None::<i64>),
                    1 => query.bind(u.arbitrary::<i64>().unwrap_or(0)),
                    2 => query.bind(*u.choose(&[-1i64, 0, 1, i64::from(i32::MAX) + 1, i64::MIN, i64::MAX, u32::MAX as i64 + 1]).unwrap_or(&0)),
                    3 => query.bind(u.arbitrary::<f64>().unwrap_or(0.5)),
                    4 => query.bind(u.arbitrary::<String>().unwrap_or_default()),
                    5 => query.bind(*u.choose(&["", "running", "queued", "{}", "[]", "null", "{\"command\":[]}", "{\"command\":[\"x\"],\"timeout_ms\":-1}", "x"]).unwrap_or(&"")),
                    _ => query.bind(u.arbitrary::<Vec<u8>>().unwrap_or_default()),
                };
                // A value the schema refuses (NOT NULL, CHECK) is no edit.
                let _ = query.execute(&self.raw).await;
            }
            read_everything(&self.store).await;
            for (table, _) in &self.tables {
                let restore = format!(
                    "DELETE FROM \"{table}\"; INSERT INTO \"{table}\" SELECT * FROM \"fuzz_saved_{table}\""
                );
                if let Err(e) = sqlx::raw_sql(&restore).execute(&self.raw).await {
                    panic!("cannot restore {table}: {e}");
                }
            }
        });
    }
}

impl Default for Rows {
    fn default() -> Self {
        Rows::new()
    }
}

async fn fixture(store: &SqliteStore) {
    let mut jobs = Vec::new();
    for (i, command) in ["echo a", "sleep 1", "false", "true"].iter().enumerate() {
        let mut job = NewJob::new(command.split(' ').map(String::from).collect());
        job.priority = i as i32;
        jobs.push(job);
    }
    jobs[1].spec.image = Some("busybox".into());
    jobs[1].spec.env = BTreeMap::from([("TOKEN".to_string(), "secret".to_string())]);
    jobs[2].unique_key = Some("nightly".into());
    jobs[3].delay = Duration::from_secs(3600);
    let fail = |e: dockhand::store::StoreError| -> ! { panic!("fixture: {e}") };
    store.enqueue(&jobs).await.unwrap_or_else(|e| fail(e));
    let lease = Duration::from_secs(3600);
    let info = WorkerInfo {
        id: "w1".into(),
        host: "fuzz".into(),
        pid: 1,
        queues: vec!["default".into()],
        concurrency: 2,
        lease,
    };
    store
        .register_worker(&info)
        .await
        .unwrap_or_else(|e| fail(e));
    let claimed = store
        .claim(&ClaimRequest::new(
            "w1",
            &["default".to_string()],
            2,
            lease,
            1,
        ))
        .await
        .unwrap_or_else(|e| fail(e));
    if let Some(first) = claimed.first() {
        let done = Completion {
            lease: first.lease,
            outcome: Outcome::Succeeded,
            output: b"a\n\xff\x00".to_vec(),
        };
        store
            .record("w1", &[done])
            .await
            .unwrap_or_else(|e| fail(e));
    }
    let leases: Vec<Lease> = claimed.iter().skip(1).map(|c| c.lease).collect();
    store
        .heartbeat("w1", Phase::Running, &leases, lease, &[])
        .await
        .unwrap_or_else(|e| fail(e));
    store
        .deregister_worker(&WorkerStop::new("w0", 75, "draining\nstopped"))
        .await
        .unwrap_or_else(|e| fail(e));
    store
        .put_schedule(&Schedule {
            name: "hourly".into(),
            cron: "0 * * * *".into(),
            job: NewJob::new(vec!["true".into()]),
            last_slot_ms: 0,
        })
        .await
        .unwrap_or_else(|e| fail(e));
    store
        .set_paused("other", true)
        .await
        .unwrap_or_else(|e| fail(e));
}

/// Every read the store offers (and a claim, a heartbeat, a reap and a
/// record, which read rows too); answers are not judged, only reached.
async fn read_everything(store: &SqliteStore) {
    let lease = Duration::from_secs(3600);
    for id in 1..=4 {
        let _ = store.get(JobId(id)).await;
        let _ = store.history(JobId(id)).await;
        let _ = store.output(JobId(id)).await;
    }
    let _ = store.list(&JobFilter::default()).await;
    let _ = store
        .list(&JobFilter {
            text: Some("a".into()),
            ..JobFilter::default()
        })
        .await;
    let _ = store.queue_stats().await;
    let _ = store.workers(lease).await;
    let _ = store.stops().await;
    let _ = store.activity(Duration::from_secs(3600)).await;
    let _ = store.schedules().await;
    let claimed = store
        .claim(&ClaimRequest::new(
            "w2",
            &["default".to_string(), "other".to_string()],
            4,
            lease,
            2,
        ))
        .await
        .unwrap_or_default();
    let leases: Vec<Lease> = claimed.iter().map(|c| c.lease).collect();
    let _ = store
        .heartbeat("w1", Phase::Running, &leases, lease, &[1])
        .await;
    let _ = store.reap_expired().await;
    let outcomes: Vec<Completion> = leases
        .iter()
        .map(|lease| Completion {
            lease: *lease,
            outcome: Outcome::Failed {
                exit_code: Some(1),
                error: "fuzz".into(),
            },
            output: Vec::new(),
        })
        .collect();
    let _ = store.record("w2", &outcomes).await;
}
