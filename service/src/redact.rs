//! Secrets out of URLs before they are logged (configs are printed at start).

use url::Url;

/// What replaces a secret.
const MASK: &str = "***";

/// Query parameters whose values are secrets (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "sslpassword",
    "passwd",
    "pwd",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
];

/// The URL as it may be logged: the password of `user:password@` and the values of
/// secret query parameters (`password`, `token`, `api_key`, ...) replaced by `***`; the
/// user name, host, port, path and other parameters kept, since they are what one needs
/// to debug a connection. A string that does not parse as a URL is replaced whole: where
/// its secret is cannot be told, so none of it is printed.
pub fn redact_url(raw: &str) -> String {
    // `scheme:rest` without `//` parses too (as an opaque path), but then a secret in
    // `rest` could not be told from the rest: treat it as unparsable.
    let Some(mut url) = Url::parse(raw).ok().filter(|u| !u.cannot_be_a_base()) else {
        return "<redacted: not a URL>".to_owned();
    };
    if url.password().is_some() {
        // Fails only for URLs that cannot have credentials, which then have no password.
        let _ = url.set_password(Some(MASK));
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let is_secret = |k: &str| SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k));
    if pairs.iter().any(|(k, _)| is_secret(k)) {
        url.query_pairs_mut()
            .clear()
            .extend_pairs(pairs.iter().map(|(k, v)| {
                if is_secret(k) {
                    (k.as_str(), MASK)
                } else {
                    (k.as_str(), v.as_str())
                }
            }));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/pulseline"),
            "postgres://app:***@db:5432/pulseline"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("http://127.0.0.1:18081"),
            "http://127.0.0.1:18081/"
        );
    }

    #[test]
    fn an_at_sign_in_the_path_or_query_is_not_a_user() {
        assert_eq!(redact_url("postgres://h/db?x=a@b"), "postgres://h/db?x=a@b");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db",
            "the last @ of the authority ends the user info"
        );
    }

    #[test]
    fn hides_secret_query_parameters() {
        let r = redact_url("postgres://h/db?sslmode=require&password=hunter2");
        assert_eq!(r, "postgres://h/db?sslmode=require&password=***");
        let r = redact_url("https://registry.example/api?Token=abc&x=1");
        assert!(!r.contains("abc"), "{r}");
        assert!(r.contains("x=1"), "{r}");
    }

    #[test]
    fn unparsable_input_is_not_echoed() {
        for raw in [
            "",
            "not a url",
            "u:hunter2@host:5432",
            "postgres://u:hunter2@[::1/db",
        ] {
            let r = redact_url(raw);
            assert!(!r.contains("hunter2"), "{raw} -> {r}");
            assert_eq!(r, "<redacted: not a URL>");
        }
    }
}
