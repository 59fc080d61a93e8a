//! Who may use the dashboard: the token, login sessions, and the
//! per-session secret every form posts back (cross-site request guard).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest token accepted: a guessable token on a network port is worse
/// than none.
pub const MIN_TOKEN: usize = 16;
/// Longest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// Most sessions at once; logging in past it ends the oldest.
const MAX_SESSIONS: usize = 1000;
/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
pub const COOKIE: &str = "dockhand_session";

/// `n` random bytes from the kernel, as hex. The process is Linux-only;
/// `/dev/urandom` never blocks once the system has booted.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compare secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token: from `--token-file` (one line, trimmed), else from
/// `DOCKHAND_UI_TOKEN`; `None` when neither is set. Errors are one line.
pub fn load_token(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, String> {
    let token = match file {
        Some(path) => {
            let shown = path.display();
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
            let mut text = String::new();
            file.take(MAX_TOKEN_FILE + 1)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
            if text.len() as u64 > MAX_TOKEN_FILE {
                return Err(format!(
                    "the token file {shown} is over {MAX_TOKEN_FILE} bytes"
                ));
            }
            text.trim().to_string()
        }
        // An empty variable is an unset one (`DOCKHAND_UI_TOKEN= dockhand ui`).
        None => match env.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => token.to_string(),
            _ => return Ok(None),
        },
    };
    if token.chars().count() < MIN_TOKEN {
        return Err(format!(
            "the dashboard token must be at least {MIN_TOKEN} characters"
        ));
    }
    if token.chars().any(char::is_control) {
        return Err("the dashboard token must be one line of printable characters".into());
    }
    Ok(Some(token))
}

/// One login.
#[derive(Clone, Debug)]
struct Session {
    /// What every form of this session posts back.
    csrf: String,
    expires: Instant,
    /// Order of login: the oldest goes first when the table is full.
    seq: u64,
}

/// The logins of a dashboard with a token; without one, a single secret
/// for every form (the dashboard then only listens on a loopback address).
#[derive(Debug)]
pub struct Sessions {
    token: Option<String>,
    /// The forms' secret when there is no token.
    open_csrf: String,
    sessions: Mutex<BTreeMap<String, Session>>,
    logins: std::sync::atomic::AtomicU64,
}

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Visitor {
    /// The secret the page's forms carry.
    pub csrf: String,
}

impl Sessions {
    /// Sessions for `token` (none: the dashboard is open to whoever can
    /// reach its loopback address).
    pub fn new(token: Option<String>) -> std::io::Result<Self> {
        Ok(Sessions {
            token,
            open_csrf: random_hex(32)?,
            sessions: Mutex::new(BTreeMap::new()),
            logins: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether a token is required.
    pub fn locked(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the token.
    pub fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| same_secret(token, given))
    }

    /// Start a session; its id (the cookie's value).
    pub fn login(&self) -> std::io::Result<String> {
        let id = random_hex(32)?;
        let session = Session {
            csrf: random_hex(32)?,
            expires: Instant::now() + SESSION_LIFETIME,
            seq: self
                .logins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.seq)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => sessions.remove(&oldest),
                None => break,
            };
        }
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    /// End a session.
    pub fn logout(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The visitor a request comes from: `None` when a token is required
    /// and the request has neither a live session cookie nor the token as
    /// a bearer.
    pub fn visitor(&self, cookie: Option<&str>, bearer: Option<&str>) -> Option<Visitor> {
        if self.token.is_none() {
            return Some(Visitor {
                csrf: self.open_csrf.clone(),
            });
        }
        if let Some(bearer) = bearer {
            // A script with the token needs no form secret: it is not a
            // browser a foreign page could steer.
            return self.token_matches(bearer).then(|| Visitor {
                csrf: String::new(),
            });
        }
        let id = cookie?;
        let sessions = self.lock();
        let session = sessions.get(id)?;
        (session.expires > Instant::now()).then(|| Visitor {
            csrf: session.csrf.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_multiline_tokens_are_refused() {
        assert!(load_token(None, Some("short".into())).is_err());
        assert!(load_token(None, Some("0123456789abcdef\u{7}".into())).is_err());
        assert_eq!(load_token(None, None), Ok(None));
        assert_eq!(load_token(None, Some(" ".into())), Ok(None));
        assert_eq!(
            load_token(None, Some(" 0123456789abcdef\n".into())),
            Ok(Some("0123456789abcdef".into()))
        );
    }

    #[test]
    fn a_token_file_is_read_up_to_4_kib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t".repeat(4096)).unwrap();
        assert_eq!(load_token(Some(&path), None), Ok(Some("t".repeat(4096))));
        // One byte more is refused, not cut to a token the operator never wrote.
        std::fs::write(&path, "t".repeat(4097)).unwrap();
        let err = load_token(Some(&path), None).unwrap_err();
        assert!(err.contains("over 4096 bytes"), "{err}");
        let missing = dir.path().join("missing");
        let err = load_token(Some(&missing), None).unwrap_err();
        assert!(err.contains("cannot read the token file"), "{err}");
    }

    #[test]
    fn sessions_need_a_login_when_locked() {
        let sessions = Sessions::new(Some("0123456789abcdef".into())).unwrap();
        assert!(sessions.visitor(None, None).is_none());
        assert!(sessions.visitor(Some("made-up"), None).is_none());
        assert!(sessions.visitor(None, Some("0123456789abcdeX")).is_none());
        assert!(sessions.visitor(None, Some("0123456789abcdef")).is_some());
        let id = sessions.login().unwrap();
        let visitor = sessions.visitor(Some(&id), None).unwrap();
        assert_eq!(visitor.csrf.len(), 64);
        sessions.logout(&id);
        assert!(sessions.visitor(Some(&id), None).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(Some("0123456789abcdef".into())).unwrap();
        let first = sessions.login().unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.login().unwrap();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert!(sessions.visitor(Some(&first), None).is_none());
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = "a=1; dockhand_session=abc; b=2";
        assert_eq!(cookie_value(header, COOKIE), Some("abc"));
        assert_eq!(cookie_value(header, "c"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
