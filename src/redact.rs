//! Keeping secrets out of everything dockhand prints: logs, errors, `show`,
//! `status`, the dashboard.
//!
//! Two kinds of secret are recognised:
//! - values of environment variables whose key looks secret (`*TOKEN*`,
//!   `*SECRET*`, `*PASSWORD*`, `*KEY*`, `*CREDENTIAL*`);
//! - passwords inside URLs and connection strings, wherever they appear:
//!   `scheme://user:PASSWORD@host`, `?password=…`, `password=…`.
//!
//! Redaction errs on the side of hiding too much: a password may hold `@`,
//! `/`, `:` or `?`, so the user-info part of a URL runs to its *last* `@`.

use std::collections::BTreeMap;

/// What a hidden value is shown as.
pub const HIDDEN: &str = "***";

/// What the value of a secret-looking environment variable is shown as.
pub const REDACTED: &str = "[redacted]";

const SECRET_WORDS: [&str; 6] = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"];

/// Whether a variable or parameter name looks like it holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
}

/// The environment as it may be shown: secret-looking keys hidden, and URL
/// passwords hidden inside every other value.
pub fn redacted_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(key, value)| {
            let shown = if is_secret_key(key) {
                REDACTED.to_string()
            } else {
                redact_text(value)
            };
            (key.clone(), shown)
        })
        .collect()
}

/// One URL with its password hidden: `postgres://u:secret@h/db` →
/// `postgres://u:***@h/db`; query parameters with secret-looking names are
/// hidden too. Text that is not a URL is returned with `key=value` secrets
/// hidden.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_text(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The user-info runs to the last '@': a password may contain '@' or '/'.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
    }
    match after.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}={HIDDEN}"),
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(after),
    }
    out
}

/// The password in a URL's user-info, as [`redact_url`] finds it.
fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password)
}

/// An error message about `url` (a parser's, say) with every secret
/// hidden, the URL's own password included wherever the message repeats it,
/// whole or as a fragment the parser quoted.
pub fn redact_error_about(url: &str, message: &str) -> String {
    let text = redact_text(message);
    match url_password(url) {
        Some(password) if !password.is_empty() => text.replace(password, HIDDEN),
        _ => text,
    }
}

/// Any text with every URL password and `password=…` pair hidden.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") && !text.contains('=') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>') {
            out.push_str(&redact_token(&token));
            token.clear();
            out.push(c);
        } else {
            token.push(c);
        }
    }
    out.push_str(&redact_token(&token));
    out
}

fn redact_token(token: &str) -> String {
    match token.find("://") {
        // Keep what precedes the scheme (e.g. `url=`), redact the URL.
        Some(at) => {
            // The scheme starts after the last character that cannot be in
            // one (which may be several bytes long).
            let start = token[..at]
                .char_indices()
                .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
                .map_or(0, |(i, c)| i + c.len_utf8());
            format!("{}{}", &token[..start], redact_url(&token[start..]))
        }
        None => redact_pairs(token),
    }
}

/// `password=x` and the like (libpq key-value strings, query fragments).
fn redact_pairs(text: &str) -> String {
    if !text.contains('=') {
        return text.to_string();
    }
    text.split('&')
        .map(|part| match part.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}={HIDDEN}"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `text` on one line: control characters (newlines, tabs, escapes) are
/// written as Rust escapes, so a message built from user input (a URL, a
/// file line) cannot break a one-line error or forge a log line.
pub fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `urls` fuzz target: sqlx quoted a fragment of a URL
    /// it could not parse, password and all.
    #[test]
    fn a_parser_error_never_repeats_the_password() {
        let url = "sqlite://site]?//x.db?:stgres@mode:po";
        let message = "unknown query parameter `//x.db?:stgres@mode:po`";
        let shown = redact_error_about(url, message);
        assert!(!shown.contains("stgres"), "{shown}");
        assert_eq!(redact_error_about("memory://", "plain"), "plain");
    }

    /// Found by the `urls` fuzz target: a multi-byte character right
    /// before a scheme made the redactor slice inside it and panic.
    #[test]
    fn a_url_after_a_multibyte_character_is_redacted() {
        assert_eq!(
            redact_text("é://u:pw@h and «postgres://u:pw@h/db»"),
            "é://u:***@h and «postgres://u:***@h/db»"
        );
    }

    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(one_line("plain – text"), "plain – text");
        assert_eq!(one_line("a\nb\r\tc\u{1b}[2J"), "a\\nb\\r\\tc\\u{1b}[2J");
        assert_eq!(one_line("a\nb").lines().count(), 1);
    }

    /// Every form users write; none may show the password.
    #[test]
    fn url_passwords_are_hidden_in_every_form() {
        let cases = [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
            (
                "postgres://u:ab/cd@127.0.0.1:1/db",
                "postgres://u:***@127.0.0.1:1/db",
            ),
            ("postgres://u:p@ss:w@rd@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pa?ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=pw",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=require&password=pw&application_name=x",
                "postgres://h/db?sslmode=require&password=***&application_name=x",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite://x.db", "sqlite://x.db"),
            ("host=h user=u password=pw", "host=h user=u password=***"),
        ];
        for (url, shown) in cases {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(
                !redacted.contains("pw") && !redacted.contains("ss@"),
                "{url}"
            );
        }
    }

    #[test]
    fn urls_inside_text_are_hidden() {
        let text = "cannot connect to postgres://u:pw@h/db: refused; dsn=host=h password=pw";
        let shown = redact_text(text);
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/db:"), "{shown}");
        assert_eq!(redact_text("no secrets here"), "no secrets here");
        assert_eq!(redact_text("a=b c=d"), "a=b c=d");
    }

    #[test]
    fn secret_keys_are_recognised() {
        assert!(is_secret_key("API_TOKEN"));
        assert!(is_secret_key("db_password"));
        assert!(is_secret_key("AWS_SECRET_ACCESS_KEY"));
        assert!(!is_secret_key("PATH"));
        let env = BTreeMap::from([
            ("API_TOKEN".to_string(), "s3cr3t".to_string()),
            ("MODE".to_string(), "fast".to_string()),
            (
                "DB".to_string(),
                "postgres://app:hunter2@db/app".to_string(),
            ),
        ]);
        let shown = redacted_env(&env);
        assert_eq!(shown["API_TOKEN"], REDACTED);
        assert_eq!(shown["MODE"], "fast");
        assert_eq!(shown["DB"], "postgres://app:***@db/app");
    }
}
