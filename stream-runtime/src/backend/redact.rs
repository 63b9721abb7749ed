//! Passwords out of logs and errors: every form a driver reads one from.
//!
//! A connection string carries a password in the URL's userinfo
//! (`postgres://app:secret@db/x`), in a query parameter (`?password=secret`, which sqlx and
//! the redis crate read), or, for libpq-style strings, as a `password=secret` keyword (its
//! value possibly quoted: `password='two words'`). Each is replaced by `***`, keeping
//! everything around it. Texts that may quote a connection string (driver and config errors)
//! go through [`redact_text`], or [`redact_in`] when the connection string is known, which
//! also removes the password itself wherever it appears, as the driver decoded it.

/// Query parameters and keywords whose value is a secret.
const SECRET_KEYS: &[&str] = &["password", "pass", "passwd", "sslpassword"];

/// The shortest secret [`redact_in`] also removes as a bare string: a shorter one would
/// wreck the text it is searched in (its URL forms are always redacted).
const MIN_SCRUBBED_SECRET: usize = 4;

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// The URL with any password replaced by `***`, safe to log: the userinfo's password, even
/// one holding `/`, `?` or `#` unencoded, `password=` / `pass=` query parameters, and
/// `password=` keywords of libpq-style `key=value` strings (quoted values included).
///
/// ```
/// use stream_runtime::backend::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(redact_url("redis://:pw@localhost"), "redis://:***@localhost");
/// assert_eq!(redact_url("sqlite://streams.db"), "sqlite://streams.db");
/// assert_eq!(redact_url("postgres://app:p#ss@db/x"), "postgres://app:***@db/x");
/// assert_eq!(redact_url("postgres://app@db/x?password=s3cret"), "postgres://app@db/x?password=***");
/// assert_eq!(
///     redact_url("host=db user=app password='s3 cret' dbname=x"),
///     "host=db user=app password='***' dbname=x"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    redact_keywords(&redact_url_syntax(url))
}

fn redact_url_syntax(url: &str) -> String {
    let (head, query) = match url.find("://") {
        Some(scheme_end) => {
            let rest_start = scheme_end + 3;
            let rest = &url[rest_start..];
            match userinfo_end(rest) {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let redacted = match userinfo.find(':') {
                        Some(colon) => format!("{}:***", &userinfo[..colon]),
                        None => userinfo.to_owned(),
                    };
                    let (path, query) = split_query(&rest[at..]);
                    (format!("{}{redacted}{path}", &url[..rest_start]), query)
                }
                None => {
                    let (path, query) = split_query(url);
                    (path.to_owned(), query)
                }
            }
        }
        None => {
            let (path, query) = split_query(url);
            (path.to_owned(), query)
        }
    };
    let Some(query) = query else {
        return head;
    };
    // A fragment after the query is kept as it is.
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{head}?{}", params.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Where the userinfo of `rest` (the URL after `://`) ends: at the authority's last '@'.
/// Without one there, a password holding an unencoded '/', '?' or '#' may have cut the
/// authority short: then a later '@' after a ':' ends it (hiding too much beats showing a
/// password).
fn userinfo_end(rest: &str) -> Option<usize> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..authority_end].rfind('@').or_else(|| {
        rest[..authority_end].find(':')?;
        rest[authority_end..].find('@').map(|i| authority_end + i)
    })
}

/// `(before '?', after '?')`.
fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (s, None),
    }
}

/// A `password = value` keyword found in a text: the byte range of its value.
struct Keyword {
    value_start: usize,
    value_end: usize,
    quoted: bool,
}

/// Finds libpq-style secret keywords: a secret key at the start of the text or after
/// whitespace or a quote, optional spaces, `=`, optional spaces, then a value that is
/// either single-quoted (with `\'` and `\\` escapes) or runs to the next whitespace.
fn keywords(text: &str) -> Vec<Keyword> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_boundary = i == 0
            || matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b'('
            );
        let key_len = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        if !at_boundary || key_len == 0 || !is_secret_key(&text[i..i + key_len]) {
            i += key_len.max(1);
            continue;
        }
        let mut j = i + key_len;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            i += key_len;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let value_start = j;
        let quoted = bytes.get(j) == Some(&b'\'');
        if quoted {
            j += 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(bytes.len());
        } else {
            while j < bytes.len() && !bytes[j].is_ascii_whitespace() {
                j += 1;
            }
        }
        found.push(Keyword {
            value_start,
            value_end: j,
            quoted,
        });
        i = j.max(i + 1);
    }
    found
}

/// Replaces the value of every secret keyword by `***` (`'***'` when it was quoted).
fn redact_keywords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for keyword in keywords(text) {
        out.push_str(&text[copied..keyword.value_start]);
        out.push_str(if keyword.quoted { "'***'" } else { "***" });
        copied = keyword.value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Redacts every connection string in a free text (an error message): each word holding a
/// URL, with the punctuation around it kept (`..., at postgres://app:***@db/x: refused`),
/// and every secret keyword.
pub fn redact_text(text: &str) -> String {
    let words = text
        .split(' ')
        .map(|word| {
            if !word.contains("://") {
                return word.to_owned();
            }
            let start = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
            let end = word
                .trim_end_matches(['"', '\'', '`', ',', ';', ':', ')', ']', '.'])
                .len();
            let end = end.max(start);
            format!(
                "{}{}{}",
                &word[..start],
                redact_url_syntax(&word[start..end]),
                &word[end..]
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    redact_keywords(&words)
}

/// Redacts a text that may quote the connection string `url`: the string itself is replaced
/// by its [`redact_url`] form wherever it appears, the rest goes through [`redact_text`],
/// and each of its passwords (as written, as percent-decoded, and as the driver parses it)
/// is removed wherever it still appears.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = if url.is_empty() {
        text.to_owned()
    } else {
        text.replace(url, &redact_url(url))
    };
    out = redact_text(&out);
    for secret in secrets(url) {
        if secret.len() >= MIN_SCRUBBED_SECRET {
            out = out.replace(&secret, "***");
        }
    }
    out
}

/// Every password a connection string holds, in each spelling a driver or a log may show.
fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = userinfo_end(rest) {
            if let Some((_, password)) = rest[..at].split_once(':') {
                found.push(password.to_owned());
            }
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((key, value)) = pair.split_once('=') {
                if is_secret_key(key) {
                    found.push(value.to_owned());
                }
            }
        }
    }
    for keyword in keywords(url) {
        let value = &url[keyword.value_start..keyword.value_end];
        let value = if keyword.quoted {
            value
                .trim_start_matches('\'')
                .trim_end_matches('\'')
                .replace("\\'", "'")
                .replace("\\\\", "\\")
        } else {
            value.to_owned()
        };
        found.push(value);
    }
    let decoded: Vec<String> = found.iter().filter_map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    #[cfg(feature = "redis")]
    if let Ok(info) = ::redis::IntoConnectionInfo::into_connection_info(url) {
        if let Some(password) = info.redis_settings().password() {
            found.push(password.to_owned());
        }
    }
    found.retain(|s| !s.is_empty());
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// `s` with `%XX` escapes decoded, if it has any and they decode to UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_strings() {
        for (text, shown) in [
            (
                "host=127.0.0.1 port=5499 user=u password=topsecret",
                "host=127.0.0.1 port=5499 user=u password=***",
            ),
            ("password=topsecret host=db", "password=*** host=db"),
            (
                "host=db password = 'top \\' secret' user=u",
                "host=db password = '***' user=u",
            ),
            (
                "host=db PASSWORD=x1 sslpassword=x2",
                "host=db PASSWORD=*** sslpassword=***",
            ),
            ("host=db nopassword=x", "host=db nopassword=x"),
        ] {
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    #[test]
    fn text_around_a_url_is_kept() {
        assert_eq!(
            redact_text("connecting to postgres://u@h/db?password=topsecret: refused"),
            "connecting to postgres://u@h/db?password=***: refused"
        );
        assert_eq!(
            redact_text("found string \"redis://:topsecret@cache\", expected"),
            "found string \"redis://:***@cache\", expected"
        );
        assert_eq!(
            redact_url("postgres://h/db?password=topsecret#frag"),
            "postgres://h/db?password=***#frag"
        );
    }

    #[test]
    fn known_urls_and_their_decoded_passwords() {
        let url = "postgres://u:top%40secret@h/db";
        assert_eq!(
            redact_in(&format!("at {url}: auth for top@secret failed"), url),
            "at postgres://u:***@h/db: auth for *** failed"
        );
        let url = "host=h password='top secret'";
        assert_eq!(
            redact_in(&format!("bad {url}; top secret"), url),
            "bad host=h password='***'; ***"
        );
    }
}

#[cfg(test)]
mod url_forms {
    use super::redact_url;

    /// Bad input: a password never shows, however the URL spells it.
    #[test]
    fn passwords_are_redacted_however_spelled() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("postgres://app:s3#cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3/cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3?cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3@cret@db/x", "postgres://app:***@db/x"),
            (
                "postgres://app@db/x?sslmode=disable&password=s3cret",
                "postgres://app@db/x?sslmode=disable&password=***",
            ),
            (
                "redis+unix:///tmp/r.sock?pass=s3cret",
                "redis+unix:///tmp/r.sock?pass=***",
            ),
            (
                "redis://:s3cret@localhost:6379/0",
                "redis://:***@localhost:6379/0",
            ),
            (
                "sqlite://streams.db?mode=rwc",
                "sqlite://streams.db?mode=rwc",
            ),
            ("sqlite:streams.db", "sqlite:streams.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3"), "{url}");
        }
    }

    /// Unreachable servers: the error names the server and hides the password, including
    /// whatever the client libraries put in their own error texts.
    #[cfg(any(feature = "postgres", feature = "redis"))]
    #[tokio::test]
    async fn unreachable_backends_hide_the_password() {
        let mut urls = Vec::new();
        if cfg!(feature = "postgres") {
            urls.extend([
                "postgres://app:s3cret@127.0.0.1:1/db",
                "postgres://app@127.0.0.1:1/db?password=s3cret",
                "postgres://app:s3#cret@127.0.0.1:1/db",
            ]);
        }
        if cfg!(feature = "redis") {
            urls.extend([
                "redis://:s3cret@127.0.0.1:1",
                "redis://:s3#cret@127.0.0.1:1",
            ]);
        }
        for url in urls {
            let error = match crate::backend::connect(url).await {
                Ok(_) => panic!("{url} connected"),
                Err(e) => e.to_string(),
            };
            assert!(!error.contains("s3"), "{url}: {error}");
            assert!(
                error.contains("127.0.0.1") || error.contains("URL"),
                "{url}: {error}"
            );
        }
    }
}
