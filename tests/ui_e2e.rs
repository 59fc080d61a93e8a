//! `dockhand ui` end to end: the built binary serves the dashboard over a
//! real database (PostgreSQL and SQLite), a real worker runs real jobs, and
//! headless Chromium, driven through chromedriver, clicks through it.
//! `./scripts/test` installs Chromium and chromedriver; without them these
//! tests fail, never skip.
//!
//! Screenshots of each page go to `target/tmp/ui-screenshots/`, named
//! `BACKEND-PAGE.png`.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dockhand::job::{JobId, JobState};
use dockhand::store::Store;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use support::{http_raw, wait_state, Db};

const TOKEN: &str = "correct-horse-battery-staple";
const SECRET_ENV: &str = "hunter2-very-secret";
const SECRET_URL_PASSWORD: &str = "pw-in-a-url-secret";
/// Longest wait for anything the page or the store should show.
const LIMIT: Duration = Duration::from_secs(20);

/// A chromedriver child on a free port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        // Its own process group: on drop the whole group goes, Chromium
        // too, even when a failed test never closed its session.
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}): ./scripts/test installs chromium and chromium-driver")
            });
        let driver = Driver { child, port };
        let start = Instant::now();
        loop {
            let (code, _, body) = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => http_raw(
                    &format!("127.0.0.1:{port}"),
                    "GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                ),
                Err(_) => (0, String::new(), String::new()),
            };
            if code == 200 && body.contains("\"ready\":true") {
                return driver;
            }
            assert!(
                start.elapsed() < LIMIT,
                "chromedriver did not answer /status within {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn browser(&self) -> Client {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromedriver starts a headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: a plain syscall to the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of the first element `css` finds, once one exists.
async fn text_of(browser: &Client, css: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                return text;
            }
        }
        assert!(
            start.elapsed() < LIMIT,
            "no element {css:?} within {LIMIT:?} on {:?}",
            browser.current_url().await.map(|u| u.to_string())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the first element `css` finds has text that passes `check`;
/// fails with the last text seen.
async fn until_text(browser: &Client, css: &str, what: &str, check: impl Fn(&str) -> bool) {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if check(&text) {
                    return;
                }
                last = text;
            }
        }
        assert!(
            start.elapsed() < LIMIT,
            "{css:?} never showed {what} within {LIMIT:?}; last text: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click `css`. The page's live parts are swapped every second, so an
/// element found may be replaced before the click lands (a stale
/// reference, seen on a loaded machine): find it again, a few times.
async fn click(browser: &Client, css: &str) {
    let mut last = None;
    for _ in 0..5 {
        let element = browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} to click: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
            {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("click {css:?}: {e}"),
        }
    }
    panic!("{css:?} went stale five times in a row: {last:?}");
}

/// Wait until the browser is on a page whose URL holds `needle` and
/// whose job list is there (a submitted form navigates asynchronously).
async fn wait_url(browser: &Client, needle: &str) {
    let start = Instant::now();
    loop {
        let url = browser.current_url().await.expect("url").to_string();
        if url.contains(needle) && browser.find(Locator::Css("#jobs-list")).await.is_ok() {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the browser never reached a URL with {needle:?}; it is on {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job ids listed, read in one script call: the live refresh may swap
/// the rows between two WebDriver calls (stale references on a loaded
/// machine), never inside one script.
async fn ids_listed(browser: &Client) -> Vec<i64> {
    let ids = script(
        browser,
        "return Array.from(document.querySelectorAll('tr[data-job]')).map(r => r.dataset.job);",
    )
    .await;
    ids.as_array()
        .expect("a list of ids")
        .iter()
        .map(|id| {
            id.as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("not a job id: {id}"))
        })
        .collect()
}

async fn script(browser: &Client, js: &str) -> serde_json::Value {
    browser.execute(js, vec![]).await.expect("script runs")
}

/// From the jobs list at `list`, follow the bulk link `link`, check the
/// count page, confirm, and wait for the notice.
async fn bulk_from_list(browser: &Client, list: &str, link: &str, count: &str, notice: &str) {
    browser.goto(list).await.expect("goto");
    click(browser, link).await;
    until_text(browser, "#bulk-count", "the count", |t| {
        t.starts_with(count)
    })
    .await;
    click(browser, "#confirm").await;
    until_text(browser, "p.notice", "the bulk action's notice", |t| {
        t.contains(notice)
    })
    .await;
}

/// A page on another origin (another port) with a form that posts to the
/// dashboard: what a malicious site would serve.
fn foreign_site(target: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let page = format!(
        "<!DOCTYPE html><html><body><form id=evil method=post action=\"http://{target}\">\
         <input type=hidden name=csrf value=guessed><button id=go type=submit>win a prize</button>\
         </form></body></html>"
    );
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten().take(20) {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

/// Everything the issue names, in one browser session.
async fn dashboard_in_a_browser(db: Db, backend: &str) {
    let driver = Driver::start();
    let store = db.store().await;
    let secret_env = format!("API_TOKEN={SECRET_ENV}");
    let failing = db.enqueue(
        &["--max-attempts", "1", "--env", &secret_env],
        &[
            "sh",
            "-c",
            &format!(
                "echo '<script>window.pwned=1</script>'; echo token $API_TOKEN; \
                 echo postgres://u:{SECRET_URL_PASSWORD}@db/x; echo pwned-marker; exit 3"
            ),
        ],
    );
    let to_cancel = db.enqueue(&[], &["sleep", "300"]);
    let holding = db.enqueue(&[], &["sleep", "300"]);
    let elsewhere = db.enqueue(&["--queue", "later"], &["true"]);
    let mut worker = db.worker(&["--concurrency", "4", "--shutdown-timeout", "60s"]);
    wait_state(&db, failing, JobState::Failed).await;
    wait_state(&db, to_cancel, JobState::Running).await;
    wait_state(&db, holding, JobState::Running).await;
    let (_ui, addr) = db.ui(&[], &[("DOCKHAND_UI_TOKEN", TOKEN)]);
    let base = format!("http://{addr}");
    let browser = driver.browser().await;

    // Log in: a wrong token is refused, the right one opens the overview.
    browser.goto(&format!("{base}/")).await.expect("goto");
    assert!(
        browser.current_url().await.expect("url").path() == "/login",
        "an anonymous visitor is sent to the login page"
    );
    let form = browser
        .form(Locator::Css("form"))
        .await
        .expect("login form");
    form.set_by_name("token", "not-the-token-at-all")
        .await
        .expect("type");
    form.submit().await.expect("submit");
    until_text(&browser, "p.error", "the refusal", |t| {
        t.contains("not the token")
    })
    .await;
    screenshot(&browser, &format!("{backend}-login")).await;
    let form = browser
        .form(Locator::Css("form"))
        .await
        .expect("login form");
    form.set_by_name("token", TOKEN).await.expect("type");
    form.submit().await.expect("submit");
    // The login page's own heading reads "dockhand": on a loaded machine
    // the overview may take a moment to replace it.
    until_text(&browser, "h1", "the overview", |t| t == "Overview").await;

    // Overview: the queue, the fleet's worker running, the hour's failure.
    until_text(&browser, "#workers", "the running worker", |t| {
        t.contains("running")
    })
    .await;
    let queue_row = text_of(&browser, "tr[data-queue=default]").await;
    assert!(queue_row.contains("default"), "{queue_row}");
    until_text(&browser, "#failed-hour", "one failure", |t| t == "1").await;
    screenshot(&browser, &format!("{backend}-overview")).await;

    // Jobs: filter by state, then by text in the command.
    browser.goto(&format!("{base}/jobs")).await.expect("goto");
    let filters = browser
        .form(Locator::Css("#filters"))
        .await
        .expect("filters");
    filters.set_by_name("state", "failed").await.expect("state");
    filters.submit().await.expect("filter");
    wait_url(&browser, "state=failed").await;
    assert_eq!(ids_listed(&browser).await, vec![failing]);
    let filters = browser
        .form(Locator::Css("#filters"))
        .await
        .expect("filters");
    filters.set_by_name("state", "").await.expect("state");
    filters.set_by_name("q", "pwned-MARKER").await.expect("q");
    filters.submit().await.expect("filter");
    wait_url(&browser, "q=pwned-MARKER").await;
    assert_eq!(ids_listed(&browser).await, vec![failing]);
    // A creation time range (the form's datetime-local fields, in UTC).
    browser
        .goto(&format!("{base}/jobs?from=2099-01-01T00:00"))
        .await
        .expect("goto");
    until_text(&browser, "#jobs-list", "nothing", |t| {
        t.contains("No job matches")
    })
    .await;
    browser
        .goto(&format!(
            "{base}/jobs?from=2000-01-01T00:00&until=2099-01-01T00:00"
        ))
        .await
        .expect("goto");
    assert_eq!(ids_listed(&browser).await.len(), 4);
    browser
        .goto(&format!("{base}/jobs?state=running"))
        .await
        .expect("goto");
    let mut running = ids_listed(&browser).await;
    running.sort();
    assert_eq!(running, vec![to_cancel, holding]);
    screenshot(&browser, &format!("{backend}-jobs")).await;

    // The failed job: its output is text, its secrets are hidden.
    browser
        .goto(&format!("{base}/jobs/{failing}"))
        .await
        .expect("goto");
    let output = text_of(&browser, "#output").await;
    assert!(
        output.contains("<script>window.pwned=1</script>"),
        "{output}"
    );
    assert_eq!(
        script(&browser, "return typeof window.pwned").await,
        "undefined"
    );
    assert_eq!(
        script(
            &browser,
            "return document.querySelectorAll('#output *').length"
        )
        .await,
        0
    );
    let source = browser.source().await.expect("source");
    assert!(
        !source.contains(SECRET_ENV),
        "a secret env value reached the page"
    );
    assert!(
        !source.contains(SECRET_URL_PASSWORD),
        "a URL password reached the page"
    );
    assert!(source.contains("claimed"), "the history shows the claim");
    screenshot(&browser, &format!("{backend}-job")).await;

    // Retry from the page: the store requeues it.
    click(&browser, "#retry").await;
    until_text(&browser, "p.notice", "the retry", |t| {
        t.contains("Queued again")
    })
    .await;
    let history = store.history(JobId(failing)).await.expect("history");
    assert!(history.iter().any(|e| e.kind == "retried"), "{history:?}");
    wait_state(&db, failing, JobState::Failed).await;

    // Cancel a running job: its worker stops it.
    browser
        .goto(&format!("{base}/jobs/{to_cancel}"))
        .await
        .expect("goto");
    click(&browser, "#cancel").await;
    until_text(&browser, "p.notice", "the cancel", |t| {
        t.contains("Cancel requested")
    })
    .await;
    wait_state(&db, to_cancel, JobState::Cancelled).await;
    until_text(&browser, "#state", "cancelled (live)", |t| t == "cancelled").await;

    // Pause and resume a queue.
    browser.goto(&format!("{base}/")).await.expect("goto");
    click(&browser, "tr[data-queue=default] button").await;
    until_text(&browser, "p.notice", "the pause", |t| t.contains("paused")).await;
    let paused = |stats: Vec<dockhand::store::QueueStats>| {
        stats.iter().any(|q| q.queue == "default" && q.paused)
    };
    assert!(paused(store.queue_stats().await.expect("stats")));
    click(&browser, "tr[data-queue=default] button").await;
    until_text(&browser, "p.notice", "the resume", |t| {
        t.contains("resumed")
    })
    .await;
    assert!(!paused(store.queue_stats().await.expect("stats")));

    // Bulk retry of a filtered set: a count, a confirmation, then the change.
    let retries = || async {
        store
            .history(JobId(failing))
            .await
            .expect("history")
            .iter()
            .filter(|e| e.kind == "retried")
            .count()
    };
    let retried_before = retries().await;
    bulk_from_list(
        &browser,
        &format!("{base}/jobs?state=failed"),
        "#bulk-retry",
        "1 job(s) selected: failed",
        "Queued again: 1 job(s)",
    )
    .await;
    assert_eq!(retries().await, retried_before + 1);

    // A cross-site POST, with the session cookie the browser holds, is refused.
    let foreign = foreign_site(&format!("{addr}/jobs/{elsewhere}/cancel"));
    browser
        .goto(&format!("http://{foreign}/"))
        .await
        .expect("goto");
    click(&browser, "#go").await;
    until_text(&browser, "body", "the refusal", |t| {
        t.contains("cross-site request refused")
    })
    .await;
    let untouched = store
        .get(JobId(elsewhere))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(untouched.state, JobState::Queued);
    assert!(!untouched.cancel_requested);

    // Bulk cancel of a queue, from the dashboard itself.
    bulk_from_list(
        &browser,
        &format!("{base}/jobs?queue=later"),
        "#bulk-cancel",
        "1 job(s) selected: queued or running in queue later",
        "Cancelled or asked to stop: 1 job(s)",
    )
    .await;
    let cancelled = store
        .get(JobId(elsewhere))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(cancelled.state, JobState::Cancelled);

    // Live: a worker that starts to drain shows so without a reload, then
    // its shutdown trace once it stopped.
    let workers = store
        .workers(Duration::from_secs(15))
        .await
        .expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker_id = workers[0].info.id.clone();
    browser
        .goto(&format!("{base}/workers/{worker_id}"))
        .await
        .expect("goto");
    assert_eq!(text_of(&browser, "#phase").await, "running");
    // Its jobs: the ones it ran or runs, not the queue it never served.
    let mut held = ids_listed(&browser).await;
    held.sort_unstable();
    assert_eq!(held, vec![failing, to_cancel, holding]);
    script(&browser, "window.__stayed = 42; return 0").await;
    worker.signal(libc::SIGTERM);
    let signalled = Instant::now();
    until_text(&browser, "#phase", "draining", |t| t == "draining").await;
    // A bound from the design: the drain is announced at once, and the
    // page asks every second.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "draining showed after {:?}",
        signalled.elapsed()
    );
    assert_eq!(script(&browser, "return window.__stayed").await, 42);
    screenshot(&browser, &format!("{backend}-worker-draining")).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LIMIT), 75);
    until_text(&browser, "#trace", "the shutdown trace", |t| {
        t.contains("SIGTERM")
    })
    .await;
    assert_eq!(text_of(&browser, "#exit-code").await, "75");
    assert_eq!(script(&browser, "return window.__stayed").await, 42);
    screenshot(&browser, &format!("{backend}-worker-stopped")).await;

    // Phone width: nothing wider than the screen but the tables' own scroll.
    browser.set_window_size(390, 844).await.expect("resize");
    browser.goto(&format!("{base}/")).await.expect("goto");
    text_of(&browser, "#queues").await;
    assert_eq!(
        script(
            &browser,
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        .await,
        true
    );
    screenshot(&browser, &format!("{backend}-overview-phone")).await;
    browser.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser_postgres() {
    dashboard_in_a_browser(Db::postgres("ui_browser").await, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser_sqlite() {
    dashboard_in_a_browser(Db::sqlite("ui_browser").await, "sqlite").await;
}

/// Without a token the dashboard listens on a loopback address only; a
/// short token is refused. One line each, exit 2, nothing served.
#[tokio::test]
async fn refuses_to_listen_publicly_without_a_token() {
    let db = Db::sqlite("ui_public").await;
    db.enqueue(&[], &["true"]);
    let out = db.cli(&["ui", "--listen", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("without a token"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = Command::new(support::bin())
        .args(["--database-url", &db.url, "ui", "--listen", "0.0.0.0:0"])
        .env("DOCKHAND_UI_TOKEN", "short")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
    let out = db.cli(&["ui", "--token-file", "/nonexistent/token"]);
    assert_eq!(out.status.code(), Some(2));
}

fn post(addr: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    http_raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        ),
    )
}

fn get(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"),
    )
}

/// An action's answer (`head`) redirects to `location`, and the page there
/// says `words`.
fn leads_to_notice(addr: &str, head: &str, location: &str, words: &str) {
    assert!(head.contains(&format!("location: {location}")), "{head}");
    let (code, _, page) = get(addr, location, "");
    assert_eq!(code, 200);
    assert!(page.contains(words), "{page}");
}

/// The request guards, below the browser: host names, origins, the form
/// secret, the body and header limits, and the token.
#[tokio::test]
async fn requests_are_guarded() {
    let db = Db::sqlite("ui_guards").await;
    let id = db.enqueue(&[], &["true"]);
    let store = db.store().await;
    let (mut open, addr) = db.ui(&[], &[]);

    // Without a token: only requests addressed to the loopback name.
    let (code, head, body) = get(&addr, "/", "");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    let csrf_at = body.find("name=\"csrf\" value=\"").expect("a form secret") + 19;
    let csrf = &body[csrf_at..csrf_at + 64];
    let (code, _, _) = http_raw(
        &addr,
        "GET / HTTP/1.1\r\nHost: rebound.example:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 421, "a foreign Host name (DNS rebinding) is refused");

    // An action needs this origin and the form secret.
    let cancel = format!("/jobs/{id}/cancel");
    let (code, _, _) = post(
        &addr,
        &cancel,
        "Origin: http://evil.example\r\n",
        &format!("csrf={csrf}"),
    );
    assert_eq!(code, 403);
    let (code, _, _) = post(
        &addr,
        &cancel,
        "Sec-Fetch-Site: cross-site\r\n",
        &format!("csrf={csrf}"),
    );
    assert_eq!(code, 403);
    let (code, _, _) = post(&addr, &cancel, "", "csrf=0000");
    assert_eq!(code, 403);
    let (code, _, _) = get(&addr, &cancel, "");
    assert_eq!(code, 405, "an action is never a GET");
    let job = store.get(JobId(id)).await.expect("get").expect("job");
    assert_eq!(
        job.state,
        JobState::Queued,
        "no refused request changed the job"
    );
    let (code, head, _) = post(
        &addr,
        &cancel,
        &format!("Origin: http://{addr}\r\n"),
        &format!("csrf={csrf}"),
    );
    assert_eq!(code, 303, "{head}");
    let job = store.get(JobId(id)).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Cancelled);
    // The page it leads to says what was done.
    leads_to_notice(
        &addr,
        &head,
        &format!("/jobs/{id}?notice=cancelled"),
        "<p class=\"notice\" role=\"status\">Cancelled.</p>",
    );

    // Limits: a body of 16 KiB is read, one byte more is refused (README),
    // and so is a head that never ends.
    let padded = |len: usize| {
        let start = format!("csrf={csrf}&pad=");
        format!("{start}{}", "x".repeat(len - start.len()))
    };
    let origin = format!("Origin: http://{addr}\r\n");
    let retry = format!("/jobs/{id}/retry");
    let (code, head, _) = post(&addr, &retry, &origin, &padded(16 * 1024));
    assert_eq!(code, 303, "a body of 16 KiB: {head}");
    let (code, head, _) = post(&addr, &retry, &origin, &padded(16 * 1024 + 1));
    assert_eq!(code, 413, "a body of 16 KiB and a byte: {head}");
    let big = format!("csrf={csrf}&pad={}", "x".repeat(64 * 1024));
    let (code, _, _) = post(&addr, &format!("/jobs/{id}/retry"), "", &big);
    assert_eq!(code, 413);
    // The 16 KiB retry queued the job again; a retry of a queued job
    // changes nothing, and the page says so.
    let (code, head, _) = post(&addr, &retry, &origin, &format!("csrf={csrf}"));
    assert_eq!(code, 303, "{head}");
    leads_to_notice(
        &addr,
        &head,
        &format!("/jobs/{id}?notice=not-retried"),
        "Not retried: only failed or cancelled jobs",
    );
    let started = Instant::now();
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    use std::io::{Read, Write};
    slow.write_all(b"GET / HTTP/1.1\r\nHost: ").expect("write");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    // The design's bound: a head must arrive within 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a client that never finished its head was served for {:?}",
        started.elapsed()
    );

    // SIGTERM stops it: exit 0.
    open.signal(libc::SIGTERM);
    assert_eq!(open.wait(Duration::from_secs(10)), 0, "{}", open.stderr());
    assert!(
        open.stderr().contains("dockhand ui: stopped"),
        "{}",
        open.stderr()
    );

    // With a token: nothing without it; a bearer or a session opens it.
    let (_locked, addr) = db.ui(&[], &[("DOCKHAND_UI_TOKEN", TOKEN)]);
    let (code, head, _) = get(&addr, "/jobs", "");
    assert_eq!(code, 303, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("location: /login"),
        "{head}"
    );
    let (code, _, _) = post(&addr, &format!("/jobs/{id}/retry"), "", "csrf=x");
    assert_eq!(code, 401);
    let (code, _, body) = get(
        &addr,
        "/jobs",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(code, 200);
    assert!(body.contains(&format!("data-job=\"{id}\"")), "{body}");
    let (code, _, _) = post(&addr, "/login", "", "token=wrong-wrong-wrong-wrong");
    assert_eq!(code, 401);
    let (code, head, _) = post(&addr, "/login", "", &format!("token={TOKEN}"));
    assert_eq!(code, 303);
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie
        .split_once(':')
        .and_then(|(_, v)| v.trim().split(';').next())
        .expect("cookie value");
    let (code, _, _) = get(&addr, "/", &format!("Cookie: {session}\r\n"));
    assert_eq!(code, 200);
}
