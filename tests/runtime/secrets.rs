//! Secrets: passwords are never logged or shown in errors; connection failures say what
//! to check.

use super::*;

#[tokio::test(flavor = "current_thread")]
async fn password_is_never_logged_or_shown_in_errors() {
    let (logs, _guard) = Logs::capture();

    // The memory backend ignores the rest of the URL: a password there must still be hidden.
    let probe = Probe::default();
    let rt = start(
        config("memory://app:hunter2@localhost", "secret", "", &[]),
        &probe,
    )
    .await;
    rt.shutdown().await.expect("clean shutdown");
    let text = logs.text();
    assert!(text.contains("memory://app:***@localhost"), "{text}");
    assert!(text.contains("consumer typed started: stream "), "{text}");
    // The start position only matters for a new group: on a rerun the cursor wins.
    assert!(
        text.contains("start earliest (if the group is new)"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");

    // An unreachable server: a clear error with the URL redacted.
    let mut vars = BTreeMap::new();
    vars.insert(
        "STREAMS_BACKEND",
        "postgres://app:hunter2@127.0.0.1:1/nothing",
    );
    let err = startup_error(
        "unreachable",
        "",
        &vars.into_iter().collect::<Vec<_>>(),
        "nothing listens on port 1",
    )
    .await;
    assert!(
        err.contains("postgres://app:***@127.0.0.1:1/nothing"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!logs.text().contains("hunter2"), "{}", logs.text());
    eprintln!("{}\n{err}", logs.text());
}

/// Runs the runtime's startup on `backend` with the log captured: (log, error if any).
async fn start_logged(backend: &str, env: &[(&str, &str)]) -> (String, Option<String>) {
    let (logs, _guard) = Logs::capture();
    let mut vars = vec![("STREAMS_BACKEND", backend)];
    vars.extend_from_slice(env);
    let config = config("memory://", "logged", "", &vars);
    let error = match Runtime::new()
        .config(config)
        .state(Probe::default())
        .start()
        .await
    {
        Ok(started) => {
            started.shutdown().await.expect("clean shutdown");
            None
        }
        Err(e) => Some(e.to_string()),
    };
    (logs.text(), error)
}

/// Every way a driver takes a password (URL userinfo, `?password=`, libpq `key=value`
/// strings, quoted or not), on every backend: the INFO "connecting" line and the error show
/// the string with `***` in its place, and keep the text around it.
#[tokio::test(flavor = "current_thread")]
async fn every_password_form_is_hidden_in_logs_and_errors_on_every_backend() {
    let missing = temp_dir("no-such-dir").join("missing").join("streams.db");
    let sqlite_query = format!("sqlite://{}?password=topsecret", missing.display());
    let sqlite_userinfo = format!("sqlite://u:topsecret@/{}", missing.display());
    let cases: Vec<(&str, &str)> = vec![
        ("memory://u:topsecret@localhost", "topsecret"),
        ("memory://localhost?password=topsecret&x=1", "topsecret"),
        (&sqlite_query, "topsecret"),
        (&sqlite_userinfo, "topsecret"),
        ("postgres://u:topsecret@127.0.0.1:1/db", "topsecret"),
        ("postgres://u:top%40secret@127.0.0.1:1/db", "top%40secret"),
        (
            "postgres://u@127.0.0.1:1/db?password=topsecret",
            "topsecret",
        ),
        (
            "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=topsecret",
            "topsecret",
        ),
        ("redis://:topsecret@127.0.0.1:1", "topsecret"),
        ("redis://u:topsecret@127.0.0.1:1/0", "topsecret"),
        ("redis://127.0.0.1:1/0?password=topsecret", "topsecret"),
        (
            "host=127.0.0.1 port=5499 user=u password=topsecret",
            "topsecret",
        ),
        ("host=127.0.0.1 password='top secret' user=u", "top secret"),
        ("password = topsecret host=127.0.0.1", "topsecret"),
    ];
    for (url, secret) in cases {
        let (log, error) = start_logged(url, &[]).await;
        let shown = stream_runtime::backend::redact_url(url);
        assert!(!shown.contains(secret), "{url} shown as {shown}");
        assert!(
            log.contains(&format!("connecting to {shown} (app")),
            "{url}: the log names the redacted string: {log}"
        );
        for text in [Some(&log), error.as_ref()].into_iter().flatten() {
            assert!(!text.contains(secret), "{url}: {text}");
            assert!(!text.contains("top@secret"), "{url}: {text}");
        }
        if url.starts_with("memory:") {
            assert_eq!(error, None, "{url}");
            continue;
        }
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!("{shown}:")) || error.contains(&format!("{shown} ")),
            "{url}: the error names the redacted string with its separator: {error}"
        );
    }
}

/// A refused connection names the server once and says what to check; a server that
/// accepts the connection but never answers fails after `connect_timeout` with the same
/// words on Postgres and Redis.
#[tokio::test(flavor = "current_thread")]
async fn connection_failures_say_what_to_check() {
    for url in ["postgres://u@127.0.0.1:1/db", "redis://127.0.0.1:1"] {
        let (_, error) = start_logged(url, &[]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert_eq!(error.matches(url).count(), 1, "{error}");
        assert!(
            error.contains("is the server running, and are the host and port right?"),
            "{error}"
        );
    }

    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for url in [
        format!("postgres://u@127.0.0.1:{port}/db"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let (_, error) = start_logged(&url, &[("STREAMS_CONNECT_TIMEOUT", "150ms")]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!("connecting to {url}: no answer within 150ms")),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: {error}");
    }
    silent.abort();

    for (url, what) in [
        ("redis:///abc", "missing hostname"),
        ("redis://127.0.0.1/abc", "invalid database number"),
    ] {
        let (_, error) = start_logged(url, &[]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!(
                "backend URL {url} is not a valid Redis URL ({what}); write redis://host[:port][/db]"
            )),
            "{error}"
        );
        assert!(!error.contains("InvalidClientConfig"), "{error}");
    }
}
