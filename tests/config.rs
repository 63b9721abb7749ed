//! `Streams.toml` loading: precedence, errors naming key and file, defaults (D5).

use std::path::PathBuf;
use std::time::Duration;

use stream_runtime::config::{Config, ConsumerSettings, DEFAULT_BACKEND, REFERENCE};
use stream_runtime::registry::Attributes;
use stream_runtime::{MaxRetries, Order, RetryDelay, StartPosition};
use stream_tests::{temp_dir, Logs};

fn write_config(test: &str, text: &str) -> PathBuf {
    let path = temp_dir(test).join("Streams.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

const NO_ENV: [(&str, &str); 0] = [];

fn load(path: &PathBuf, env: &[(&str, &str)]) -> Result<Config, stream_runtime::Error> {
    Config::loader()
        .file(path)
        .env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load()
}

#[test]
fn reference_file_parses_and_matches_the_built_in_defaults() {
    let config = Config::from_toml_str(REFERENCE).expect("reference.toml parses");
    let builtin = Config::default();
    assert_eq!(config.backend, builtin.backend);
    assert_eq!(config.app, builtin.app);
    assert_eq!(config.namespace, builtin.namespace);
    assert_eq!(config.max_len, builtin.max_len);
    assert_eq!(config.max_age, builtin.max_age);
    assert_eq!(config.max_payload_bytes, builtin.max_payload_bytes);
    assert_eq!(config.span_level, builtin.span_level);
    // Every [defaults] key equals the built-in default.
    let resolved = config.resolve("anything", &Attributes::NONE);
    let plain = Config::default().resolve("anything", &Attributes::NONE);
    assert_eq!(resolved, plain);
    // The example table sets every override key.
    let example = &config.consumers["example"];
    assert_eq!(example.max_retries, Some(MaxRetries::Unlimited));
    assert_eq!(example.concurrency, Some(4));
    assert_eq!(
        example.retry_delay,
        Some(RetryDelay::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30)
        })
    );
    assert_eq!(example.start.as_deref(), Some("earliest"));
    // The example table documents every consumer key.
    let ConsumerSettings {
        enabled,
        max_retries,
        concurrency,
        visibility_timeout,
        poll_interval,
        shutdown_timeout,
        retry_delay,
        start,
        dead_letter,
        app,
        namespace,
        heartbeat,
        ordered,
        ..
    } = example.clone();
    assert!(enabled.is_some() && max_retries.is_some() && concurrency.is_some());
    assert!(visibility_timeout.is_some() && poll_interval.is_some());
    assert!(shutdown_timeout.is_some() && retry_delay.is_some() && start.is_some());
    assert!(dead_letter.is_some() && app.is_some() && namespace.is_some());
    assert!(heartbeat.is_some());
    assert_eq!(ordered, Some(Order::Key));
}

#[test]
fn the_repository_streams_toml_is_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Streams.toml");
    let config = load(&path, &NO_ENV).expect("Streams.toml at the repository root parses");
    assert!(config.backend.starts_with("sqlite:"), "{}", config.backend);
}

#[test]
fn no_file_means_the_embedded_sqlite_default() {
    let dir = temp_dir("nofile");
    // The loader looks for ./Streams.toml; point STREAMS_CONFIG nowhere and use defaults.
    let config = Config::loader()
        .env(NO_ENV)
        .load()
        .expect("no file is fine");
    assert_eq!(Config::default().backend, DEFAULT_BACKEND);
    assert_eq!(DEFAULT_BACKEND, "sqlite://streams.db");
    // The working directory of the test (tests/) has no Streams.toml.
    assert!(!PathBuf::from("Streams.toml").exists() || config.source.is_some());
    if config.source.is_none() {
        assert_eq!(config.backend, DEFAULT_BACKEND);
    }
    // An explicit STREAMS_CONFIG that does not exist is an error, not a silent default.
    let missing = dir.join("missing.toml");
    let err = Config::loader()
        .env([("STREAMS_CONFIG", missing.to_string_lossy().into_owned())])
        .load()
        .expect_err("missing STREAMS_CONFIG file");
    let text = err.to_string();
    assert!(
        text.contains("missing.toml") && text.contains("STREAMS_CONFIG"),
        "{text}"
    );
}

#[test]
fn precedence_builtin_defaults_attribute_consumer_table_env() {
    let path = write_config(
        "precedence",
        r#"
        app = "shop"
        [defaults]
        concurrency = 2
        max_retries = 7
        poll_interval = "250ms"
        [consumers.bill]
        concurrency = 5
        visibility_timeout = "2m"
        "#,
    );
    let config = load(&path, &NO_ENV).expect("loads");
    let mut attrs = Attributes::NONE;
    attrs.concurrency = Some(3);
    attrs.max_retries = Some(MaxRetries::Limited(1));
    attrs.visibility_timeout = Some(Duration::from_secs(10));
    attrs.start = Some("earliest");

    let bill = config.resolve("bill", &attrs).options;
    assert_eq!(bill.concurrency, 5, "[consumers.bill] beats the attribute");
    assert_eq!(bill.visibility_timeout, Duration::from_secs(120));
    assert_eq!(
        bill.max_retries,
        MaxRetries::Limited(1),
        "attribute beats [defaults]"
    );
    assert_eq!(
        bill.poll_interval,
        Duration::from_millis(250),
        "[defaults] beats built-in"
    );
    assert_eq!(
        bill.shutdown_timeout,
        Duration::from_secs(30),
        "built-in default"
    );
    assert_eq!(bill.start, StartPosition::Earliest);

    let other = config.resolve("ship", &Attributes::NONE).options;
    assert_eq!(other.concurrency, 2);
    assert_eq!(other.max_retries, MaxRetries::Limited(7));

    // The environment replaces the file at the same key.
    let config = load(
        &path,
        &[
            ("STREAMS_CONSUMERS__BILL__CONCURRENCY", "9"),
            ("STREAMS_DEFAULTS__MAX_RETRIES", "unlimited"),
            ("STREAMS_APP", "123"),
            ("STREAMS_BACKEND", "memory://"),
            ("STREAMS_TEST_POSTGRES_URL", "ignored: not a config key"),
        ],
    )
    .expect("loads with env");
    assert_eq!(config.app, "123");
    assert_eq!(config.backend, "memory://");
    assert_eq!(config.resolve("bill", &attrs).options.concurrency, 9);
    assert_eq!(
        config
            .resolve("ship", &Attributes::NONE)
            .options
            .max_retries,
        MaxRetries::Unlimited
    );
    assert_eq!(config.service_config().app, "123");
}

#[test]
fn disabled_consumer_and_unknown_consumer_tables() {
    let path = write_config(
        "disabled",
        "[consumers.audit]\nenabled = false\n[consumers.typo]\nconcurrency = 2\n",
    );
    let config = load(&path, &NO_ENV).expect("loads");
    assert!(!config.resolve("audit", &Attributes::NONE).enabled);
    assert!(config.resolve("bill", &Attributes::NONE).enabled);
    let err = config
        .check_consumer_names(["audit", "bill"])
        .expect_err("typo names no consumer")
        .to_string();
    assert!(
        err.contains("[consumers.typo]") && err.contains("audit, bill"),
        "{err}"
    );
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn unknown_key_error_names_the_key_and_the_file() {
    let path = write_config("unknown", "backend = \"memory://\"\nmax_lenght = 5\n");
    let err = load(&path, &NO_ENV).expect_err("unknown key").to_string();
    assert!(err.contains("max_lenght"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    let path = write_config("unknown-nested", "[consumers.bill]\nconcurency = 5\n");
    let err = load(&path, &NO_ENV)
        .expect_err("unknown nested key")
        .to_string();
    assert!(err.contains("consumers.bill.concurency"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    let path = write_config("unknown-defaults", "[defaults]\nconcurency = 5\n");
    let err = load(&path, &NO_ENV)
        .expect_err("unknown defaults key")
        .to_string();
    assert!(
        err.contains("defaults.concurency") && err.contains("concurrency"),
        "{err}"
    );
    assert!(
        !err.contains("namespace"),
        "[defaults] takes no namespace: {err}"
    );

    let path = write_config("unknown-env", "");
    let err = load(&path, &[("STREAMS_DEFAULTS__CONCURENCY", "3")])
        .expect_err("unknown env key")
        .to_string();
    assert!(
        err.contains("STREAMS_DEFAULTS__CONCURENCY") && err.contains("defaults.concurency"),
        "{err}"
    );
}

#[test]
fn bad_values_are_errors_naming_key_and_source() {
    for (name, text, key) in [
        (
            "duration",
            "[defaults]\nvisibility_timeout = \"30\"\n",
            "defaults.visibility_timeout",
        ),
        (
            "unit",
            "[consumers.bill]\npoll_interval = \"5 parsecs\"\n",
            "consumers.bill.poll_interval",
        ),
        (
            "retries",
            "[defaults]\nmax_retries = -1\n",
            "defaults.max_retries",
        ),
        (
            "retries-word",
            "[defaults]\nmax_retries = \"forever\"\n",
            "defaults.max_retries",
        ),
        ("type", "max_len = \"lots\"\n", "max_len"),
        (
            "retry-delay",
            "[defaults]\nretry_delay = { base = \"1s\" }\n",
            "defaults.retry_delay",
        ),
        ("defaults-app", "[defaults]\napp = \"x\"\n", "defaults.app"),
        ("span-level", "span_level = \"verbose\"\n", "span_level"),
    ] {
        let path = write_config(name, text);
        let err = load(&path, &NO_ENV).expect_err(name).to_string();
        eprintln!("{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
        assert!(err.contains(&path.display().to_string()), "{name}: {err}");
    }
    let path = write_config(
        "bad-duration-text",
        "[defaults]\nshutdown_timeout = \"30\"\n",
    );
    let err = load(&path, &NO_ENV).expect_err("bad duration").to_string();
    assert!(
        err.contains("\"30s\""),
        "the error shows the expected form: {err}"
    );

    let path = write_config("env-bad", "");
    let err = load(&path, &[("STREAMS_DEFAULTS__CONCURRENCY", "many")])
        .expect_err("bad env value")
        .to_string();
    eprintln!("env: {err}");
    assert!(err.contains("STREAMS_DEFAULTS__CONCURRENCY"), "{err}");
}

/// `span_level` reaches the service settings from the file, and an environment variable
/// replaces it.
#[test]
fn span_level_from_the_file_and_the_environment() {
    use stream_runtime::SpanLevel;
    assert_eq!(Config::default().span_level, SpanLevel::Info);
    let path = write_config("span-level-file", "span_level = \"debug\"\n");
    let config = load(&path, &NO_ENV).expect("loads");
    assert_eq!(config.service_config().span_level, SpanLevel::Debug);
    let config = load(&path, &[("STREAMS_SPAN_LEVEL", "off")]).expect("loads");
    assert_eq!(config.service_config().span_level, SpanLevel::Off);
}

#[test]
fn passwords_never_appear_in_config_errors() {
    let path = write_config(
        "secret",
        "backend = \"postgres://app:hunter2@db/x\"\nmax_retries_typo = 1\n",
    );
    let err = load(&path, &NO_ENV).expect_err("unknown key").to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let path = write_config("secret-value", "[defaults]\nstart = 5\n");
    let err = load(
        &path,
        &[("STREAMS_DEFAULTS__MAX_RETRIES", "redis://:hunter2@cache")],
    )
    .expect_err("a URL where a number belongs")
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

/// A config (or a runtime holding one) printed with `{:?}` does not echo the password.
#[test]
fn debug_output_of_a_config_hides_the_password() {
    let path = write_config(
        "secret-debug",
        "backend = \"postgres://app:hunter2@db/x\"\n",
    );
    let config = load(&path, &NO_ENV).expect("valid config");
    assert_eq!(config.backend, "postgres://app:hunter2@db/x");
    let text = format!("{config:?}");
    assert!(text.contains("postgres://app:***@db/x"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let runtime = stream_runtime::Runtime::new().config(config);
    let text = format!("{runtime:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn consumer_settings_default_is_empty() {
    let settings = ConsumerSettings::default();
    assert_eq!(settings.enabled, None);
    assert_eq!(settings.concurrency, None);
}

/// Passwords hide wherever a URL can carry one: the userinfo (even with unescaped `/`, `?`,
/// `#` in it, which ends the authority early) and the `password=` / `pass=` query
/// parameters that sqlx and redis read.
#[test]
fn every_password_in_a_url_is_redacted() {
    use stream_runtime::backend::redact_url;
    for (url, redacted) in [
        (
            "postgres://app:hunter2@db:5432/x",
            "postgres://app:***@db:5432/x",
        ),
        (
            "postgres://app@db/x?password=hunter2",
            "postgres://app@db/x?password=***",
        ),
        (
            "postgresql://db/x?sslmode=require&PASSWORD=hunter2&application_name=a",
            "postgresql://db/x?sslmode=require&PASSWORD=***&application_name=a",
        ),
        (
            "redis+unix:///run/redis.sock?db=1&pass=hunter2",
            "redis+unix:///run/redis.sock?db=1&pass=***",
        ),
        ("postgres://app:hun/ter2@db/x", "postgres://app:***@db/x"),
        ("postgres://app:hun?ter#2@db/x", "postgres://app:***@db/x"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("sqlite://streams.db", "sqlite://streams.db"),
        (
            "sqlite:///srv/data@2026/streams.db",
            "sqlite:///srv/data@2026/streams.db",
        ),
        ("postgres://app@db/x", "postgres://app@db/x"),
    ] {
        assert_eq!(redact_url(url), redacted, "{url}");
    }
}

/// A file that is not valid TOML says so, with the file and the line, not "bad value for ``".
#[test]
fn invalid_toml_names_the_file_and_the_line() {
    let path = write_config(
        "syntax",
        "backend = \"memory://\"\n[defaults\nmax_retries = 3\n",
    );
    let err = load(&path, &NO_ENV).expect_err("invalid TOML").to_string();
    assert!(
        err.contains(&format!("{} is not valid TOML", path.display())),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("``"), "{err}");
}

/// An unknown key inside `retry_delay = { ... }` is reported as unknown (with the valid
/// ones), not as a value of the wrong type.
#[test]
fn unknown_key_in_retry_delay_lists_the_valid_ones() {
    let path = write_config(
        "retry-delay-key",
        "[defaults]\nretry_delay = { base = \"100ms\", max = \"1s\", factor = 2 }\n",
    );
    let err = load(&path, &NO_ENV).expect_err("unknown key").to_string();
    assert!(
        err.contains("unknown key `defaults.retry_delay.factor`") && err.contains("base, max"),
        "{err}"
    );
    assert!(err.contains(&path.display().to_string()), "{err}");
}

/// A top-level `app` or `namespace` that breaks the naming rules is a config error naming the
/// key and the file, not an error blamed on the first consumer to start.
#[test]
fn bad_app_or_namespace_names_the_key_and_the_file() {
    let path = write_config("bad-app", "app = \"my app\"\n");
    let err = load(&path, &NO_ENV)
        .expect_err("a space in app")
        .to_string();
    assert!(
        err.contains("bad value for `app`")
            && err.contains(&path.display().to_string())
            && err.contains("STREAMS_APP"),
        "{err}"
    );
    let path = write_config("bad-namespace", "");
    let err = load(&path, &[("STREAMS_NAMESPACE", "a\tb")])
        .expect_err("a tab in namespace")
        .to_string();
    assert!(
        err.contains("bad value for `namespace`") && err.contains("STREAMS_NAMESPACE"),
        "{err}"
    );
}

/// An empty `app` / `namespace` means the default, as for every name override: the config
/// says so itself, so the startup log shows the names really used.
#[test]
fn empty_app_and_namespace_mean_the_defaults() {
    let path = write_config("empty-app", "app = \"\"\n");
    let config = load(&path, &[("STREAMS_NAMESPACE", "")]).expect("valid config");
    assert_eq!(config.app, stream_runtime::DEFAULT_APP);
    assert_eq!(config.namespace, stream_runtime::DEFAULT_NAMESPACE);
}

/// A misspelt `STREAMS_` variable cannot be an error (other tools share the prefix), but it
/// must not vanish silently: the program would run on the default backend.
#[test]
fn a_misspelt_environment_variable_is_warned_about() {
    let (logs, _guard) = Logs::capture();
    let path = write_config("typo-env", "");
    let config = load(
        &path,
        &[
            ("STREAMS_BAKEND", "postgres://db/x"),
            ("STREAMS_CONFIG", "elsewhere.toml"),
            ("STREAMS_TEST_POSTGRES_URL", "postgres://db/test"),
            ("STREAMS_APP", "shop"),
        ],
    )
    .expect("a typo is not an error");
    assert_eq!(config.backend, DEFAULT_BACKEND);
    assert_eq!(config.app, "shop");
    let text = logs.text();
    assert!(
        text.contains("ignoring environment variable STREAMS_BAKEND") && text.contains("backend"),
        "{text}"
    );
    assert!(
        !text.contains("STREAMS_CONFIG") && !text.contains("STREAMS_TEST_"),
        "{text}"
    );
}

#[test]
fn http_endpoint_from_the_file_or_the_environment() {
    let path = write_config("http", "[http]\naddr = \"127.0.0.1:9464\"\n");
    let config = load(&path, &[]).expect("load");
    let addr = config.http.as_ref().map(|h| h.addr.to_string());
    assert_eq!(addr.as_deref(), Some("127.0.0.1:9464"));
    let config = load(&path, &[("STREAMS_HTTP__ADDR", "127.0.0.1:0")]).expect("load");
    let addr = config.http.as_ref().map(|h| h.addr.to_string());
    assert_eq!(addr.as_deref(), Some("127.0.0.1:0"));
    let none = write_config("no-http", "app = \"a\"\n");
    assert!(
        load(&none, &[]).expect("load").http.is_none(),
        "off by default"
    );
    let bad = write_config("bad-http", "[http]\naddr = \"localhost\"\n");
    let err = load(&bad, &[]).expect_err("not a socket address");
    let text = err.to_string();
    assert!(text.contains("addr") && text.contains("bad-http"), "{text}");
}

/// The file and the environment accept exactly what the `#[consumer]` attribute accepts:
/// the same durations ("7d"), the same retry delays, and the same refusals (no zero
/// workers, no zero visibility timeout or poll interval, no bad names or start positions).
#[test]
fn the_file_follows_the_attributes_rules() {
    for (name, text, key, words) in [
        (
            "zero-workers",
            "[defaults]\nconcurrency = 0\n",
            "defaults.concurrency",
            "a whole number of at least 1",
        ),
        (
            "zero-visibility",
            "[consumers.bill]\nvisibility_timeout = \"0s\"\n",
            "consumers.bill.visibility_timeout",
            "longer than zero",
        ),
        (
            "zero-poll",
            "[defaults]\npoll_interval = \"0ms\"\n",
            "defaults.poll_interval",
            "longer than zero",
        ),
        (
            "bad-start",
            "[defaults]\nstart = \"\"\n",
            "defaults.start",
            "\"latest\", \"earliest\" or a message id",
        ),
        (
            "bad-dead-letter",
            "[defaults]\ndead_letter = \"has space\"\n",
            "defaults.dead_letter",
            "whitespace",
        ),
        (
            "bad-namespace",
            "[consumers.bill]\nnamespace = \"e\\tu\"\n",
            "consumers.bill.namespace",
            "control characters",
        ),
        (
            "backwards-backoff",
            "[defaults]\nretry_delay = { base = \"5s\", max = \"1s\" }\n",
            "defaults.retry_delay",
            "shorter than `base`",
        ),
        (
            "negative-len",
            "max_len = -1\n",
            "max_len",
            "a whole number of messages, 0 or more",
        ),
        (
            "word-len",
            "max_payload_bytes = \"big\"\n",
            "max_payload_bytes",
            "a whole number of bytes, at least 1",
        ),
    ] {
        let path = write_config(name, text);
        let err = load(&path, &NO_ENV).expect_err(name).to_string();
        assert!(err.contains(key) && err.contains(words), "{name}: {err}");
        assert!(
            !err.contains("usize") && !err.contains("u64"),
            "{name}: speaks Rust types: {err}"
        );
    }
    let err = load(
        &write_config("env-zero", ""),
        &[("STREAMS_CONSUMERS__BILL__CONCURRENCY", "0")],
    )
    .expect_err("zero workers from the environment")
    .to_string();
    assert!(
        err.contains("STREAMS_CONSUMERS__BILL__CONCURRENCY")
            && err.contains("a whole number of at least 1"),
        "{err}"
    );

    let path = write_config(
        "same-grammar",
        "max_age = \"7d\"\n[defaults]\nvisibility_timeout = \"1d\"\nretry_delay = \"1m30s\"\n",
    );
    let config = load(&path, &NO_ENV).expect("valid config");
    assert_eq!(config.max_age, Duration::from_secs(7 * 86_400));
    let options = config.resolve("bill", &Attributes::NONE).options;
    assert_eq!(options.visibility_timeout, Duration::from_secs(86_400));
    assert_eq!(
        options.retry_delay,
        RetryDelay::Fixed(Duration::from_secs(90))
    );
}

/// `heartbeat`: off by default; the attribute turns it on, `[defaults]` only where the
/// attribute is silent, `[consumers.<name>]` and the environment over both.
#[test]
fn heartbeat_follows_the_precedence_chain() {
    let path = write_config(
        "heartbeat-precedence",
        "[defaults]\nheartbeat = true\n[consumers.bill]\nheartbeat = false\n",
    );
    let config = load(&path, &NO_ENV).expect("valid config");
    let mut on = Attributes::NONE;
    on.heartbeat = Some(true);
    let mut off = Attributes::NONE;
    off.heartbeat = Some(false);
    let heartbeat = |name: &str, attrs: &Attributes| config.resolve(name, attrs).options.heartbeat;
    assert!(
        !heartbeat("bill", &on),
        "[consumers.bill] overrides the attribute"
    );
    assert!(
        !heartbeat("ship", &off),
        "[defaults] does not override the attribute"
    );
    assert!(heartbeat("ship", &Attributes::NONE), "[defaults] fills in");
    let env = load(&path, &[("STREAMS_CONSUMERS__BILL__HEARTBEAT", "true")]).expect("valid");
    assert!(env.resolve("bill", &Attributes::NONE).options.heartbeat);
    let builtin = Config::default().resolve("ship", &Attributes::NONE).options;
    assert!(!builtin.heartbeat, "off by default");
    let path = write_config("heartbeat-bad", "[defaults]\nheartbeat = \"yes\"\n");
    let error = load(&path, &NO_ENV)
        .expect_err("a string is no bool")
        .to_string();
    assert!(error.contains("heartbeat"), "{error}");
}

/// `retry_delay` set in the attribute sits in the precedence chain like every other key.
#[test]
fn retry_delay_from_the_attribute_is_between_defaults_and_the_consumer_table() {
    let path = write_config(
        "retry-precedence",
        "[defaults]\nretry_delay = \"1s\"\n[consumers.bill]\nretry_delay = \"3s\"\n",
    );
    let config = load(&path, &NO_ENV).expect("valid config");
    let mut attrs = Attributes::NONE;
    attrs.retry_delay = Some(RetryDelay::Fixed(Duration::from_secs(2)));
    let delay = |name: &str, attrs: &Attributes| config.resolve(name, attrs).options.retry_delay;
    assert_eq!(
        delay("bill", &attrs),
        RetryDelay::Fixed(Duration::from_secs(3))
    );
    assert_eq!(
        delay("ship", &attrs),
        RetryDelay::Fixed(Duration::from_secs(2))
    );
    assert_eq!(
        delay("ship", &Attributes::NONE),
        RetryDelay::Fixed(Duration::from_secs(1))
    );
    let builtin = Config::default().resolve("ship", &Attributes::NONE).options;
    assert_eq!(builtin.retry_delay, RetryDelay::VisibilityTimeout);
}

#[test]
fn ordered_from_attribute_file_and_environment_in_precedence() {
    let path = write_config(
        "ordered-precedence",
        "[defaults]\nordered = \"key\"\n[consumers.bill]\nordered = \"none\"\n",
    );
    let config = load(&path, &NO_ENV).expect("valid config");
    let ordered = |config: &Config, name: &str, attrs: &Attributes| {
        config.resolve(name, attrs).options.ordered
    };
    let mut none = Attributes::NONE;
    none.ordered = Some(Order::None);
    // [consumers.bill] > attribute > [defaults] > built-in.
    assert_eq!(ordered(&config, "bill", &Attributes::NONE), Order::None);
    assert_eq!(ordered(&config, "ship", &none), Order::None);
    assert_eq!(ordered(&config, "ship", &Attributes::NONE), Order::Key);
    let builtin = Config::default().resolve("ship", &Attributes::NONE).options;
    assert_eq!(builtin.ordered, Order::None);
    let mut key = Attributes::NONE;
    key.ordered = Some(Order::Key);
    assert_eq!(ordered(&Config::default(), "ship", &key), Order::Key);
    // The environment replaces the file's value at the same key.
    let env = load(&path, &[("STREAMS_CONSUMERS__BILL__ORDERED", "key")]).expect("valid");
    assert_eq!(ordered(&env, "bill", &Attributes::NONE), Order::Key);
    // A bad value names the key, the file and what is expected.
    let bad = write_config("ordered-bad", "[consumers.bill]\nordered = \"partition\"\n");
    let e = load(&bad, &NO_ENV)
        .expect_err("unknown ordering")
        .to_string();
    assert!(e.contains("ordered") && e.contains("\"key\""), "{e}");
    assert!(e.contains("Streams.toml"), "{e}");
}

#[test]
fn batch_settings_follow_the_precedence() {
    let path = write_config(
        "batch_precedence",
        r#"
        [defaults]
        batch_size = 5
        batch_wait = "10ms"
        [consumers.bulk]
        batch_size = 7
        "#,
    );
    let config = load(&path, &NO_ENV).expect("loads");
    let mut attrs = Attributes::NONE;
    attrs.batch_size = Some(100);
    attrs.batch_wait = Some(Duration::from_millis(50));
    let bulk = config.resolve("bulk", &attrs).options;
    assert_eq!(bulk.batch_size, 7, "[consumers.bulk] beats the attribute");
    assert_eq!(
        bulk.batch_wait,
        Duration::from_millis(50),
        "attribute beats [defaults]"
    );
    let other = config.resolve("other", &Attributes::NONE).options;
    assert_eq!(
        (other.batch_size, other.batch_wait),
        (5, Duration::from_millis(10))
    );
    let builtin = Config::default()
        .resolve("other", &Attributes::NONE)
        .options;
    assert_eq!(
        (builtin.batch_size, builtin.batch_wait),
        (100, Duration::ZERO)
    );

    let config = load(&path, &[("STREAMS_CONSUMERS__BULK__BATCH_WAIT", "20ms")]).expect("loads");
    assert_eq!(
        config.resolve("bulk", &attrs).options.batch_wait,
        Duration::from_millis(20),
        "the environment beats the file"
    );

    for (bad, expected) in [
        ("0", "from 1 to 10000"),
        ("10001", "not 10001"),
        ("\"many\"", "from 1 to 10000"),
    ] {
        let path = write_config(
            "batch_bad",
            &format!("[consumers.bulk]\nbatch_size = {bad}\n"),
        );
        let error = load(&path, &NO_ENV)
            .expect_err("a bad batch_size")
            .to_string();
        assert!(
            error.contains("batch_size") && error.contains(expected),
            "{error}"
        );
    }
}
