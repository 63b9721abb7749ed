//! Loading: the file, the environment (`STREAMS_*`) and the defaults, merged by figment,
//! with errors naming each key and where it came from.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, CONFIG_PATH_VAR, DEFAULT_FILE, ENV_PREFIX, TOP_LEVEL_KEYS};
use crate::error::{Error, Result};

/// Chooses the config file and the environment; [`Config::load`] uses the defaults.
#[derive(Debug, Default)]
pub struct Loader {
    file: Option<PathBuf>,
    env: Option<Vec<(String, String)>>,
}

impl Loader {
    /// The default file and the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this file (it must exist) instead of `$STREAMS_CONFIG` / `./Streams.toml`.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Uses these variables instead of the process environment (tests, embedding).
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Reads the file and the environment.
    pub fn load(self) -> Result<Config> {
        // The process environment's typos are worth one warning per process, however
        // often the config is loaded.
        static WARNED: std::sync::Once = std::sync::Once::new();
        let mut warn = true;
        let env = match self.env {
            Some(vars) => vars,
            None => {
                warn = !WARNED.is_completed();
                WARNED.call_once(|| ());
                std::env::vars().collect()
            }
        };
        let path = match self.file {
            Some(path) => Some(path),
            None => match env.iter().find(|(k, _)| k == CONFIG_PATH_VAR) {
                Some((_, path)) if !path.is_empty() => Some(PathBuf::from(path)),
                _ => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
            },
        };
        let mut figment = Figment::new();
        if let Some(path) = &path {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "config file {} does not exist (named by {})",
                    path.display(),
                    if path.as_os_str() == DEFAULT_FILE {
                        "default"
                    } else {
                        CONFIG_PATH_VAR
                    }
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let vars = EnvVars::new(env);
        for name in vars.ignored.iter().filter(|_| warn) {
            tracing::warn!(
                "ignoring environment variable {name}: {} is not a Streams.toml key \
                 (top-level keys: {}; nested keys are joined by \"__\")",
                name.strip_prefix(ENV_PREFIX)
                    .unwrap_or(name)
                    .to_ascii_lowercase(),
                TOP_LEVEL_KEYS.join(", ")
            );
        }
        figment = figment.merge(vars);
        extract(figment, path)
    }
}

pub(super) fn extract(figment: Figment, source: Option<PathBuf>) -> Result<Config> {
    match figment.extract::<Config>() {
        Ok(mut config) => {
            if config.defaults.app.is_some() || config.defaults.namespace.is_some() {
                return Err(Error::Config(format!(
                    "{}: `defaults.app` / `defaults.namespace` are not settings; set the top-level `app` / `namespace` instead",
                    source.as_deref().map_or("config".into(), Path::to_string_lossy)
                )));
            }
            // Stream names are built from these: a bad one is the file's (or variable's)
            // mistake, said here rather than by the first consumer to start.
            // Empty = the built-in default, as for any name override (and as logged).
            if config.app.is_empty() {
                config.app = crate::naming::DEFAULT_APP.to_owned();
            }
            if config.namespace.is_empty() {
                config.namespace = crate::naming::DEFAULT_NAMESPACE.to_owned();
            }
            for (key, value) in [("app", &config.app), ("namespace", &config.namespace)] {
                if let Err(e) = crate::naming::validate(key, value) {
                    return Err(Error::Config(format!(
                        "bad value for `{key}` in {} or {ENV_PREFIX}{}: {e}",
                        source
                            .as_deref()
                            .map_or("config".into(), Path::to_string_lossy),
                        key.to_ascii_uppercase()
                    )));
                }
            }
            config.source = source;
            Ok(config)
        }
        Err(errors) => Err(Error::Config(describe(errors))),
    }
}

/// One line per problem: `` `key` in <where>: <what> ``, with URLs redacted.
pub(super) fn describe(errors: figment::Error) -> String {
    let mut lines = Vec::new();
    for error in errors {
        let key = error.path.join(".");
        let place = match &error.metadata {
            Some(md) => match &md.source {
                Some(figment::Source::File(path)) => path.display().to_string(),
                _ if md.name == ENV_METADATA_NAME => {
                    let keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
                    format!(
                        "environment variable {}",
                        md.interpolate(&Profile::Default, &keys)
                    )
                }
                _ => md.name.to_string(),
            },
            None => "config".to_owned(),
        };
        let what = match &error.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let key = if error.path.last() == Some(field) {
                    key.clone()
                } else if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
                // `[defaults]` shares its type with `[consumers.<name>]` but takes no
                // app / namespace.
                let in_defaults = error.path.first().is_some_and(|p| p == "defaults");
                let valid: Vec<&str> = expected
                    .iter()
                    .copied()
                    .filter(|k| !(in_defaults && matches!(*k, "app" | "namespace")))
                    .collect();
                format!(
                    "unknown key `{key}` in {place}; valid keys here: {}",
                    valid.join(", ")
                )
            }
            // No key: the file itself is not valid TOML (the message gives line and column).
            kind if key.is_empty() => format!("{place} is not valid TOML: {kind}"),
            kind => format!("bad value for `{key}` in {place}: {kind}"),
        };
        lines.push(crate::backend::redact_text(&what));
    }
    lines.join("; ")
}

pub(super) const ENV_METADATA_NAME: &str = "environment";

/// `STREAMS_*` variables as a figment provider: prefix stripped, lower-cased, `__` nests.
pub(super) struct EnvVars {
    vars: Vec<(String, String)>,
    /// `STREAMS_*` variables that are not configuration, most likely misspelt
    /// (`STREAMS_CONFIG` and the test suites' `STREAMS_TEST_*` are not listed).
    ignored: Vec<String>,
}

impl EnvVars {
    fn new(all: Vec<(String, String)>) -> Self {
        let (mut vars, mut ignored) = (Vec::new(), Vec::new());
        for (name, value) in all {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            let top = key.split("__").next().unwrap_or_default();
            if TOP_LEVEL_KEYS.contains(&top) {
                vars.push((key, value));
            } else if name != CONFIG_PATH_VAR && !rest.starts_with("TEST_") {
                ignored.push(name);
            }
        }
        ignored.sort();
        EnvVars { vars, ignored }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME).interpolater(|_: &Profile, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in &self.vars {
            let parts: Vec<&str> = key.split("__").filter(|p| !p.is_empty()).collect();
            // Strings stay strings for text keys (an app named "123" is still a name).
            let value = if matches!(
                parts.last(),
                Some(&("backend" | "app" | "namespace" | "start" | "dead_letter"))
            ) {
                Value::from(raw.clone())
            } else {
                raw.parse::<Value>()
                    .unwrap_or_else(|_| Value::from(raw.clone()))
            };
            insert(&mut dict, &parts, value);
        }
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

pub(super) fn insert(dict: &mut Dict, parts: &[&str], value: Value) {
    match parts {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}
