//! `dockhand ui`: a web dashboard served by the binary itself.
//!
//! Server-rendered HTML (maud escapes every value), one small script for
//! the live parts, assets compiled in. Every action is the store operation
//! the CLI runs (`Store::retry`, `cancel`, `set_paused`, `bulk`).
//!
//! Who may use it: without a token it listens on a loopback address only
//! and answers only requests addressed to that name (DNS rebinding); with
//! a token every request needs a session (a login form sets an HttpOnly,
//! SameSite=Strict cookie) or the token as a bearer. Every action is a POST
//! that must carry the session's form secret and, when the browser says
//! where it comes from, come from this origin.

mod auth;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use clap::Args;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::auth::{Sessions, Visitor, COOKIE};
use super::CliError;
use crate::job::{JobId, JobState};
use crate::store::{
    Activity, AnyStore, BulkAction, BulkFilter, CancelResult, JobFilter, QueueStats, Store,
    StoreError, WorkerRow, WorkerStop,
};

/// Where the dashboard listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest request body (the forms are a few fields).
const MAX_BODY: usize = 16 * 1024;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Longest a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one connection is served (the live pages reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Longest any page waits for the database.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the overview's figures are reused at least: many open
/// dashboards cost the database one set of queries a second.
const OVERVIEW_FRESH: Duration = Duration::from_secs(1);
/// ... and at least this many times what they took to compute, so a table
/// so large that the counts take a while is never queried more than a
/// tenth of the time (a million rows: about 0.5 s every 5 s).
const OVERVIEW_COST_FACTOR: u32 = 10;
/// A failed login waits this long: guessing a token is slow.
const LOGIN_PENALTY: Duration = Duration::from_millis(500);
/// Jobs on one page of the list.
pub(crate) const PAGE: u32 = 50;

/// `dockhand ui` options.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Address to listen on. Any address but a loopback one needs a token.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// A file holding the access token (at least 16 characters).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A worker silent for two of its leases is shown as lost; this lease
    /// is assumed for workers that announced none.
    #[arg(long, default_value = "15s", value_parser = super::parse_duration)]
    pub lease: Duration,
}

/// What the handlers share.
struct Inner {
    store: AnyStore,
    sessions: Sessions,
    /// The database, password hidden, for the page footer.
    database: String,
    /// The store's instance id (container names start with it).
    instance: String,
    lease: Duration,
    /// `Host` values accepted when there is no token.
    hosts: Option<Vec<String>>,
    /// The overview's figures: when they were computed, for how long they
    /// are reused, and the figures.
    overview: tokio::sync::Mutex<Option<(Instant, Duration, Arc<Overview>)>>,
}

type Ui = Arc<Inner>;

/// The overview's figures.
pub(crate) struct Overview {
    pub queues: Vec<QueueStats>,
    pub activity: Vec<Activity>,
    pub workers: Vec<WorkerRow>,
    pub stops: Vec<WorkerStop>,
}

/// Run the dashboard until SIGTERM or SIGINT.
pub async fn run(store: AnyStore, database: &str, args: UiArgs) -> Result<i32, CliError> {
    let token = auth::load_token(
        args.token_file.as_deref(),
        std::env::var("DOCKHAND_UI_TOKEN").ok(),
    )
    .map_err(CliError::usage)?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "refusing to listen on {} without a token: set DOCKHAND_UI_TOKEN or --token-file, or listen on 127.0.0.1",
            args.listen
        )));
    }
    let mut signals = super::worker::signal_source()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::fatal(format!("cannot listen on {}: {e}", args.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::fatal(format!("cannot listen on {}: {e}", args.listen)))?;
    let hosts = token.is_none().then(|| {
        let port = bound.port();
        vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            bound.to_string(),
        ]
    });
    let instance = store.instance_id().await?;
    let sessions = Sessions::new(token)
        .map_err(|e| CliError::fatal(format!("cannot read random bytes: {e}")))?;
    let ui = Arc::new(Inner {
        store,
        sessions,
        database: crate::redact::redact_url(database),
        instance,
        lease: args.lease,
        hosts,
        overview: tokio::sync::Mutex::new(None),
    });
    crate::errln!(
        "dockhand ui: listening on http://{bound}/ ({})",
        if ui.sessions.locked() {
            "token required"
        } else {
            "no token: this host only"
        }
    );
    let stop = async move {
        loop {
            match signals.recv().await {
                Some(crate::machine::Signal::Usr1) => continue,
                _ => return,
            }
        }
    };
    serve(listener, router(ui), stop).await;
    crate::errln!("dockhand ui: stopped");
    Ok(0)
}

/// Accept connections until `stop`, each with a bounded head, head time
/// and lifetime, and at most [`MAX_CONNECTIONS`] at once.
async fn serve(listener: TcpListener, app: Router, stop: impl std::future::Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(%error, "ui: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn router(ui: Ui) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/workers/{id}", get(worker))
        .route("/queues/{queue}/{verb}", post(pause_or_resume))
        .route("/bulk", get(bulk_preview).post(bulk))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ui.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ui)
}

/// Headers on every answer: no framing, no sniffing, no referrer to other
/// sites (`no-referrer` would make browsers send `Origin: null` on our own
/// forms), no
/// caching of pages that show the fleet, and scripts only from here.
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Every request passes here: the host check, the login check and, for a
/// POST, the origin check. The visitor goes to the handler, which checks
/// the form secret.
async fn guard(State(ui): State<Ui>, mut request: Request, next: Next) -> Response {
    let mut response = match admit(
        &ui,
        request.headers(),
        request.method(),
        request.uri().path(),
    ) {
        Ok(visitor) => {
            if let Some(visitor) = visitor {
                request.extensions_mut().insert(visitor);
            }
            next.run(request).await
        }
        Err(refused) => refused,
    };
    harden(&mut response);
    response
}

/// Who may go on: `Ok(None)` for a public page without a login.
// The error is the answer sent (once per request): boxing it saves nothing.
#[allow(clippy::result_large_err)]
fn admit(
    ui: &Inner,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<Option<Visitor>, Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(hosts) = &ui.hosts {
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers only to its loopback address",
            ));
        }
    }
    if method == Method::POST && !same_origin(headers, host) {
        return Err(refuse(StatusCode::FORBIDDEN, "cross-site request refused"));
    }
    let public = path == "/login" || path.starts_with("/static/");
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|h| h.to_str().ok())
        .and_then(|c| auth::cookie_value(c, COOKIE));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match ui.sessions.visitor(cookie, bearer) {
        Some(visitor) => Ok(Some(visitor)),
        None if public => Ok(None),
        None if method == Method::GET => Err(Redirect::to("/login").into_response()),
        None => Err(refuse(StatusCode::UNAUTHORIZED, "log in first")),
    }
}

/// Whether the browser says the request comes from this dashboard's own
/// pages. Browsers send `Sec-Fetch-Site` and `Origin` on every POST; a
/// client that sends neither is not a browser a foreign page steers, and
/// still needs the form secret.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match text("origin") {
        Some(origin) => origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
        None => true,
    }
}

/// A short page that says why a request was refused.
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, pages::message("Refused", why)).into_response()
}

/// Whether a posted form carries the visitor's secret.
fn form_secret_ok(visitor: &Visitor, posted: &str) -> bool {
    // A bearer (a script with the token) has no form secret to carry.
    visitor.csrf.is_empty() || auth::same_secret(&visitor.csrf, posted)
}

/// A store answer within [`QUERY_TIMEOUT`].
async fn ask<T>(
    what: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Response> {
    match tokio::time::timeout(QUERY_TIMEOUT, what).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(StoreError::NotFound(what))) => Err((
            StatusCode::NOT_FOUND,
            pages::message("Not found", &format!("job {what} does not exist")),
        )
            .into_response()),
        Ok(Err(StoreError::InvalidJob(why))) => {
            Err((StatusCode::BAD_REQUEST, pages::message("Refused", &why)).into_response())
        }
        Ok(Err(error)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "The database did not answer",
                &crate::redact::redact_text(&error.to_string()),
            ),
        )
            .into_response()),
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "The database did not answer",
                &format!("no answer within {}s", QUERY_TIMEOUT.as_secs()),
            ),
        )
            .into_response()),
    }
}

/// A notice shown after an action (`?notice=`): a fixed set of words, so
/// a link cannot put text of its choosing on the page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NoticeQuery {
    notice: Option<String>,
    n: Option<u64>,
}

impl NoticeQuery {
    fn text(&self) -> Option<String> {
        let n = self.n.unwrap_or(0);
        Some(match self.notice.as_deref()? {
            "retried" => "Queued again.".to_string(),
            "not-retried" => "Not retried: only failed or cancelled jobs can be (or a newer job holds its unique key).".to_string(),
            "cancelled" => "Cancelled.".to_string(),
            "cancel-requested" => "Cancel requested: its worker stops it and records the end.".to_string(),
            "already-final" => "Already finished: nothing changed.".to_string(),
            "paused" => "Queue paused: workers claim nothing from it.".to_string(),
            "resumed" => "Queue resumed.".to_string(),
            "bulk-retry" => format!("Queued again: {n} job(s)."),
            "bulk-cancel" => format!("Cancelled or asked to stop: {n} job(s)."),
            _ => return None,
        })
    }
}

async fn overview(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Response> {
    let figures = overview_figures(&ui).await?;
    Ok(pages::overview(&page(&ui, &visitor, notice.text()), &figures).into_response())
}

async fn overview_figures(ui: &Inner) -> Result<Arc<Overview>, Response> {
    let mut cached = ui.overview.lock().await;
    if let Some((at, fresh, figures)) = cached.as_ref() {
        if at.elapsed() < *fresh {
            return Ok(figures.clone());
        }
    }
    let started = Instant::now();
    let figures = Arc::new(Overview {
        queues: ask(ui.store.queue_stats()).await?,
        activity: ask(ui.store.activity(Duration::from_secs(3600))).await?,
        workers: ask(ui.store.workers(ui.lease)).await?,
        stops: ask(ui.store.stops()).await?,
    });
    let fresh = OVERVIEW_FRESH.max(started.elapsed() * OVERVIEW_COST_FACTOR);
    *cached = Some((Instant::now(), fresh, figures.clone()));
    Ok(figures)
}

/// What every page needs to know.
pub(crate) struct PageContext<'a> {
    pub csrf: &'a str,
    pub locked: bool,
    pub database: &'a str,
    pub notice: Option<String>,
}

fn page<'a>(ui: &'a Inner, visitor: &'a Visitor, notice: Option<String>) -> PageContext<'a> {
    PageContext {
        csrf: &visitor.csrf,
        locked: ui.sessions.locked(),
        database: &ui.database,
        notice,
    }
}

/// The jobs list's filters, as the query string carries them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct JobsQuery {
    pub state: Option<String>,
    pub queue: Option<String>,
    pub q: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub before: Option<i64>,
    pub notice: Option<String>,
    pub n: Option<u64>,
}

/// An empty form field means "any".
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl JobsQuery {
    /// The store filter, or a one-line reason it is not one.
    fn filter(&self) -> Result<JobFilter, String> {
        let (state, scheduled) = match given(&self.state) {
            None => (None, None),
            Some(text) => match text.parse::<super::StateFilter>()? {
                super::StateFilter::State(state) => (Some(state), None),
                super::StateFilter::Scheduled => (Some(JobState::Queued), Some(true)),
            },
        };
        let text = given(&self.q).map(str::to_string);
        if text
            .as_ref()
            .is_some_and(|t| t.len() > crate::store::MAX_FILTER_TEXT)
        {
            return Err(format!(
                "the search text is over {} bytes",
                crate::store::MAX_FILTER_TEXT
            ));
        }
        Ok(JobFilter {
            state,
            scheduled,
            queue: given(&self.queue).map(str::to_string),
            text,
            created_from: given(&self.from).map(parse_time).transpose()?,
            created_until: given(&self.until).map(parse_time).transpose()?,
            before: self.before.map(JobId),
            limit: Some(PAGE + 1),
            worker: None,
        })
    }
}

/// A time from a form: RFC 3339, or the `datetime-local` field's
/// `YYYY-MM-DDTHH:MM[:SS]`, read as UTC. Unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid time {text:?}: use e.g. 2026-11-30T09:00 (UTC)");
    let at = humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{text}:00")))
        .map_err(|_| bad())?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis();
    i64::try_from(ms).map_err(|_| bad())
}

async fn jobs(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<JobsQuery>,
) -> Result<Response, Response> {
    let notice = NoticeQuery {
        notice: query.notice.clone(),
        n: query.n,
    }
    .text();
    let context = page(&ui, &visitor, notice);
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(why) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                pages::jobs(&context, &query, &[], false, Some(&why)),
            )
                .into_response())
        }
    };
    let mut found = ask(ui.store.list(&filter)).await?;
    let more = found.len() > PAGE as usize;
    found.truncate(PAGE as usize);
    Ok(pages::jobs(&context, &query, &found, more, None).into_response())
}

async fn job(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<i64>,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Response> {
    let id = JobId(id);
    let Some(job) = ask(ui.store.get(id)).await? else {
        return Ok(not_found().await);
    };
    let history = ask(ui.store.history(id)).await?;
    let output = ask(ui.store.output(id)).await?;
    let container = job.spec.image.as_ref().and_then(|_| {
        (job.lease_token > 0)
            .then(|| crate::executor::docker::container_name(&ui.instance, job.id, job.lease_token))
    });
    Ok(pages::job(
        &page(&ui, &visitor, notice.text()),
        &job,
        &history,
        output.as_deref(),
        container.as_deref(),
    )
    .into_response())
}

async fn worker(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let live = ask(ui.store.workers(ui.lease))
        .await?
        .into_iter()
        .find(|w| w.info.id == id);
    let stop = ask(ui.store.stops())
        .await?
        .into_iter()
        .find(|s| s.worker_id == id);
    if live.is_none() && stop.is_none() {
        return Ok(not_found().await);
    }
    let held = ask(ui.store.list(&JobFilter {
        worker: Some(id.clone()),
        limit: Some(PAGE),
        ..JobFilter::default()
    }))
    .await?;
    Ok(pages::worker(
        &page(&ui, &visitor, None),
        &id,
        live.as_ref(),
        stop.as_ref(),
        &held,
    )
    .into_response())
}

/// A posted form with nothing but its secret.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SecretForm {
    csrf: String,
}

#[allow(clippy::result_large_err)] // the error is the answer, as in `admit`
fn check_secret(visitor: &Visitor, posted: &str) -> Result<(), Response> {
    if form_secret_ok(visitor, posted) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            "this form is stale or was not sent from this dashboard; reload the page",
        ))
    }
}

async fn retry(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<i64>,
    Form(form): Form<SecretForm>,
) -> Result<Response, Response> {
    check_secret(&visitor, &form.csrf)?;
    let notice = if ask(ui.store.retry(JobId(id))).await? {
        "retried"
    } else {
        "not-retried"
    };
    Ok(Redirect::to(&format!("/jobs/{id}?notice={notice}")).into_response())
}

async fn cancel(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<i64>,
    Form(form): Form<SecretForm>,
) -> Result<Response, Response> {
    check_secret(&visitor, &form.csrf)?;
    let notice = match ask(ui.store.cancel(JobId(id))).await? {
        CancelResult::Cancelled => "cancelled",
        CancelResult::Requested => "cancel-requested",
        CancelResult::AlreadyFinal(_) => "already-final",
    };
    Ok(Redirect::to(&format!("/jobs/{id}?notice={notice}")).into_response())
}

/// `POST /queues/{queue}/pause` and `/resume`.
async fn pause_or_resume(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Path((queue, verb)): Path<(String, String)>,
    Form(form): Form<SecretForm>,
) -> Result<Response, Response> {
    let paused = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Ok(not_found().await),
    };
    set_paused(&ui, &visitor, &queue, &form.csrf, paused).await
}

async fn set_paused(
    ui: &Inner,
    visitor: &Visitor,
    queue: &str,
    csrf: &str,
    paused: bool,
) -> Result<Response, Response> {
    check_secret(visitor, csrf)?;
    ask(ui.store.set_paused(queue, paused)).await?;
    // The overview must show the change at once, not a second later.
    *ui.overview.lock().await = None;
    let notice = if paused { "paused" } else { "resumed" };
    Ok(Redirect::to(&format!("/?notice={notice}")).into_response())
}

/// A bulk action's request: the action and the list's state and queue
/// filters (the store's bulk filter has no text or time range).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BulkQuery {
    pub action: String,
    pub state: Option<String>,
    pub queue: Option<String>,
    pub csrf: String,
}

impl BulkQuery {
    fn parse(&self) -> Result<(BulkAction, BulkFilter), String> {
        let action = match self.action.as_str() {
            "retry" => BulkAction::Retry,
            "cancel" => BulkAction::Cancel,
            other => return Err(format!("unknown action {other:?}; use retry or cancel")),
        };
        let state = match given(&self.state) {
            None => None,
            Some(text) => match text.parse::<super::StateFilter>()? {
                super::StateFilter::State(state) => Some(state),
                // Cancelling queued jobs includes the scheduled ones.
                super::StateFilter::Scheduled => Some(JobState::Queued),
            },
        };
        let filter = BulkFilter {
            state,
            queue: given(&self.queue).map(str::to_string),
            older_than: None,
        };
        action.select(&filter).map_err(|e| e.to_string())?;
        Ok((action, filter))
    }
}

async fn bulk_preview(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<BulkQuery>,
) -> Result<Response, Response> {
    let context = page(&ui, &visitor, None);
    let (action, filter) = query.parse().map_err(|why| {
        (StatusCode::BAD_REQUEST, pages::message("Refused", &why)).into_response()
    })?;
    let count = ask(ui.store.bulk(action, &filter, true)).await?;
    Ok(pages::bulk_confirm(&context, &query, action, &filter, count).into_response())
}

async fn bulk(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<BulkQuery>,
) -> Result<Response, Response> {
    check_secret(&visitor, &form.csrf)?;
    let (action, filter) = form.parse().map_err(|why| {
        (StatusCode::BAD_REQUEST, pages::message("Refused", &why)).into_response()
    })?;
    let count = ask(ui.store.bulk(action, &filter, false)).await?;
    *ui.overview.lock().await = None;
    let state = given(&form.state).unwrap_or("");
    let queue = given(&form.queue).unwrap_or("");
    let back = format!(
        "/jobs?state={}&queue={}&notice=bulk-{}&n={count}",
        pages::query_escape(state),
        pages::query_escape(queue),
        action.verb()
    );
    Ok(Redirect::to(&back).into_response())
}

async fn login_page(State(ui): State<Ui>) -> Response {
    if !ui.sessions.locked() {
        return Redirect::to("/").into_response();
    }
    pages::login(None).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    token: String,
}

async fn login(State(ui): State<Ui>, Form(form): Form<LoginForm>) -> Response {
    if !ui.sessions.locked() {
        return Redirect::to("/").into_response();
    }
    if !ui.sessions.token_matches(form.token.trim()) {
        tokio::time::sleep(LOGIN_PENALTY).await;
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the token.")),
        )
            .into_response();
    }
    let session = match ui.sessions.login() {
        Ok(session) => session,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot start a session: {e}"),
            )
        }
    };
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        auth::SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(
    State(ui): State<Ui>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    Form(form): Form<SecretForm>,
) -> Result<Response, Response> {
    check_secret(&visitor, &form.csrf)?;
    if let Some(id) = headers
        .get(header::COOKIE)
        .and_then(|h| h.to_str().ok())
        .and_then(|c| auth::cookie_value(c, COOKIE))
    {
        ui.sessions.logout(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("dockhand_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("app.js"))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("app.css"))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is nothing here."),
    )
        .into_response()
}
