//! Phase 1: the attribute's arguments, through a builder with one setter per key that
//! rejects duplicates and lists the valid keys for an unknown one (tokio-macros style).

use std::time::Duration;

use proc_macro2::Span;
use stream_rules::RetryDelay;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta, Token};

use super::Errors;

/// Every key the attribute takes, in the order the docs list them.
const KEYS: &[&str] = &[
    "stream",
    "group",
    "max_retries",
    "concurrency",
    "visibility_timeout",
    "poll_interval",
    "shutdown_timeout",
    "retry_delay",
    "start",
    "dead_letter",
    "app",
    "namespace",
    "name",
    "transactional",
    "crate",
    "heartbeat",
    "ordered",
    "batch_size",
    "batch_wait",
];

/// `max_retries` as given.
#[derive(Clone, Copy, Debug)]
pub enum MaxRetries {
    Limited(u32),
    Unlimited,
}

/// The checked arguments.
pub struct Args {
    /// Path of the runtime crate (`crate = "..."`, default `::stream_runtime`).
    pub krate: syn::Path,
    pub name: String,
    pub stream: String,
    pub group: String,
    pub max_retries: Option<MaxRetries>,
    pub concurrency: Option<usize>,
    pub visibility_timeout: Option<Duration>,
    pub poll_interval: Option<Duration>,
    pub shutdown_timeout: Option<Duration>,
    pub retry_delay: Option<RetryDelay>,
    pub start: Option<String>,
    pub dead_letter: Option<String>,
    pub app: Option<String>,
    pub namespace: Option<String>,
    /// `transactional`: the handler takes a transaction that commits with its ack.
    pub transactional: bool,
    /// `heartbeat` / `heartbeat = true|false`: extend the claims of running handlers.
    pub heartbeat: Option<bool>,
    /// `ordered = "key"`: `Some(true)`; `ordered = "none"`: `Some(false)`.
    pub ordered: Option<bool>,
    /// `batch_size = N`: the handler takes a batch of up to N messages.
    pub batch_size: Option<usize>,
    /// `batch_wait = "50ms"`: how long a short batch waits to fill.
    pub batch_wait: Option<Duration>,
}

/// One value per key, with the span of the key that set it (to report duplicates).
#[derive(Default)]
struct Builder {
    seen: Vec<(&'static str, Span)>,
    /// Keys suggested for misspelt ones: not reported missing as well.
    suggested: Vec<&'static str>,
    krate: Option<syn::Path>,
    name: Option<String>,
    stream: Option<String>,
    group: Option<String>,
    max_retries: Option<MaxRetries>,
    concurrency: Option<usize>,
    visibility_timeout: Option<Duration>,
    poll_interval: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    retry_delay: Option<RetryDelay>,
    start: Option<String>,
    dead_letter: Option<String>,
    app: Option<String>,
    namespace: Option<String>,
    transactional: bool,
    heartbeat: Option<bool>,
    ordered: Option<bool>,
    batch_size: Option<usize>,
    batch_wait: Option<Duration>,
}

/// Parses and checks the arguments; `None` when any of them is wrong (reported in `errors`).
pub fn parse(
    tokens: proc_macro2::TokenStream,
    function: &syn::Ident,
    errors: &mut Errors,
) -> Option<Args> {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!("{e}; #[consumer] takes `key = value` pairs, e.g. #[consumer(stream = \"orders\", group = \"billing\")]"),
            ));
            return None;
        }
    };
    let before = errors.count();
    let mut builder = Builder::default();
    for meta in metas {
        builder.set(meta, errors);
    }
    if !builder.given("stream") {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `stream = \"...\"`: the stream this consumer reads",
        ));
    }
    if !builder.given("group") {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `group = \"...\"`: the consumer group this consumer belongs to",
        ));
    }
    if errors.count() > before {
        return None;
    }
    let (Some(stream), Some(group)) = (builder.stream, builder.group) else {
        return None;
    };
    Some(Args {
        krate: builder
            .krate
            .unwrap_or_else(|| syn::parse_quote!(::stream_runtime)),
        name: builder
            .name
            .unwrap_or_else(|| syn::ext::IdentExt::unraw(function).to_string()),
        stream,
        group,
        max_retries: builder.max_retries,
        concurrency: builder.concurrency,
        visibility_timeout: builder.visibility_timeout,
        poll_interval: builder.poll_interval,
        shutdown_timeout: builder.shutdown_timeout,
        retry_delay: builder.retry_delay,
        start: builder.start,
        dead_letter: builder.dead_letter,
        app: builder.app,
        namespace: builder.namespace,
        transactional: builder.transactional,
        heartbeat: builder.heartbeat,
        ordered: builder.ordered,
        batch_size: builder.batch_size,
        batch_wait: builder.batch_wait,
    })
}

impl Builder {
    /// Whether `key` was given, or a misspelling of it was reported.
    fn given(&self, key: &str) -> bool {
        self.seen.iter().any(|(k, _)| *k == key) || self.suggested.contains(&key)
    }

    fn set(&mut self, meta: Meta, errors: &mut Errors) {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            // `retry_delay(base = "100ms", max = "5s")`, as `{ base = .., max = .. }` in
            // Streams.toml.
            Meta::List(list) if path_key(&list.path) == "retry_delay" => {
                if self.seen.iter().any(|(k, _)| *k == "retry_delay") {
                    errors.spanned(&list.path, "duplicate key `retry_delay`");
                    return;
                }
                self.seen.push(("retry_delay", list.path.span()));
                self.retry_delay = exponential(&list, errors);
                return;
            }
            Meta::Path(path) if path_key(&path) == "ordered" => {
                errors.spanned(
                    &path,
                    "`ordered` takes a value: write `ordered = \"key\"` (messages sharing a \
                     key one at a time, in stream order)",
                );
                return;
            }
            // A flag, given alone.
            Meta::Path(path) if path_key(&path) == "transactional" => {
                if self.seen.iter().any(|(k, _)| *k == "transactional") {
                    errors.spanned(&path, "duplicate key `transactional`");
                    return;
                }
                self.seen.push(("transactional", path.span()));
                self.transactional = true;
                return;
            }
            Meta::Path(path) if path_key(&path) == "heartbeat" => {
                if self.seen.iter().any(|(k, _)| *k == "heartbeat") {
                    errors.spanned(&path, "duplicate key `heartbeat`");
                    return;
                }
                self.seen.push(("heartbeat", path.span()));
                self.heartbeat = Some(true);
                return;
            }
            other => {
                let path = other.path();
                let key = path_key(path);
                errors.spanned(
                    &other,
                    format!(
                        "expected `{key} = value`; #[consumer] takes `key = value` pairs, e.g. \
                         stream = \"orders\""
                    ),
                );
                return;
            }
        };
        let key_text = path_key(&nv.path);
        let Some(key) = KEYS.iter().copied().find(|k| *k == key_text) else {
            let suggestion = closest(&key_text);
            self.suggested.extend(suggestion);
            let hint = suggestion
                .map(|k| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            errors.spanned(
                &nv.path,
                format!(
                    "unknown key `{key_text}`; {hint}valid keys are: {}",
                    KEYS.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return;
        };
        if self.seen.iter().any(|(k, _)| *k == key) {
            errors.spanned(&nv.path, format!("duplicate key `{key}`"));
            return;
        }
        self.seen.push((key, nv.path.span()));
        let value = &nv.value;
        match key {
            "stream" => self.stream = name_value(key, value, errors),
            "group" => self.group = name_value(key, value, errors),
            "dead_letter" => self.dead_letter = name_value(key, value, errors),
            "app" => self.app = name_value(key, value, errors),
            "namespace" => self.namespace = name_value(key, value, errors),
            "name" => self.name = name_value(key, value, errors),
            "max_retries" => self.max_retries = max_retries(value, errors),
            "concurrency" => self.concurrency = concurrency(value, errors),
            "visibility_timeout" => self.visibility_timeout = duration(key, value, errors),
            "poll_interval" => self.poll_interval = duration(key, value, errors),
            "shutdown_timeout" => self.shutdown_timeout = duration(key, value, errors),
            "retry_delay" => self.retry_delay = retry_delay(value, errors),
            "start" => self.start = start(value, errors),
            "crate" => self.krate = krate(value, errors),
            "heartbeat" => self.heartbeat = flag(key, value, errors),
            "ordered" => self.ordered = ordered(value, errors),
            "batch_size" => self.batch_size = super::batch::batch_size(value, errors),
            "batch_wait" => self.batch_wait = duration(key, value, errors),
            "transactional" => errors.spanned(
                &nv,
                "`transactional` is a flag: write `transactional` alone, without a value",
            ),
            _ => unreachable!("every key in KEYS has a setter"),
        }
    }
}

/// A flag given with a value: `heartbeat = true` or `heartbeat = false`.
fn flag(key: &str, value: &Expr, errors: &mut Errors) -> Option<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(b.value),
        other => {
            errors.spanned(
                other,
                format!(
                    "`{key}` is a flag: write `{key}` alone, or `{key} = true` / `{key} = false`"
                ),
            );
            None
        }
    }
}

fn path_key(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| syn::ext::IdentExt::unraw(&s.ident).to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// The valid key nearest to a misspelt one, if any is close.
fn closest(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .copied()
        .map(|k| (edit_distance(k, key), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn lit_str<'a>(key: &str, value: &'a Expr, errors: &mut Errors) -> Option<&'a syn::LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        other => {
            errors.spanned(
                other,
                format!("`{key}` takes a string literal, e.g. {key} = \"...\""),
            );
            None
        }
    }
}

/// A stream, group, app, namespace or consumer name: the runtime's naming rules.
fn name_value(key: &str, value: &Expr, errors: &mut Errors) -> Option<String> {
    let lit = lit_str(key, value, errors)?;
    let text = lit.value();
    let problem = stream_rules::name_problem(&text);
    match problem {
        Some(problem) => {
            errors.spanned(lit, format!("invalid `{key}` {text:?}: {problem}"));
            None
        }
        None => Some(text),
    }
}

fn max_retries(value: &Expr, errors: &mut Errors) -> Option<MaxRetries> {
    let help = format!("`max_retries` takes {}", stream_rules::MAX_RETRIES_EXPECTED);
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u32>() {
            Ok(n) => Some(MaxRetries::Limited(n)),
            Err(e) => {
                errors.spanned(int, format!("{help}: {e}"));
                None
            }
        },
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) if s.value() == "unlimited" => Some(MaxRetries::Unlimited),
        other => {
            errors.spanned(other, help);
            None
        }
    }
}

fn concurrency(value: &Expr, errors: &mut Errors) -> Option<usize> {
    whole_number(
        "concurrency",
        stream_rules::CONCURRENCY_EXPECTED,
        stream_rules::concurrency_problem,
        value,
        errors,
    )
}

/// A whole number literal for `key`, checked by `problem` (the runtime's rule).
pub(super) fn whole_number(
    key: &str,
    expected: &str,
    problem: fn(u64) -> Option<String>,
    value: &Expr,
    errors: &mut Errors,
) -> Option<usize> {
    let help = format!("`{key}` takes {expected}");
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<usize>() {
            Ok(n) => match problem(n as u64) {
                Some(problem) => {
                    errors.spanned(int, problem);
                    None
                }
                None => Some(n),
            },
            Err(e) => {
                errors.spanned(int, format!("{help}: {e}"));
                None
            }
        },
        other => {
            errors.spanned(other, help);
            None
        }
    }
}

/// A duration literal: the runtime's grammar and rules.
fn duration(key: &str, value: &Expr, errors: &mut Errors) -> Option<Duration> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = value
    {
        let n = int.base10_digits();
        errors.spanned(
            int,
            format!(
                "`{key}` takes a duration string with a unit: write \"{n}ms\" or \"{n}s\", \
                 not {n}"
            ),
        );
        return None;
    }
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    else {
        errors.spanned(
            value,
            format!(
                "`{key}` takes a duration string with a unit, e.g. {key} = \"30s\", \"250ms\" \
                 or \"1m30s\""
            ),
        );
        return None;
    };
    let parsed = stream_rules::parse_duration(&lit.value())
        .map_err(|e| format!("`{key}`: {e}"))
        .and_then(|d| match stream_rules::duration_problem(key, d) {
            Some(problem) => Err(problem),
            None => Ok(d),
        });
    match parsed {
        Ok(d) => Some(d),
        Err(problem) => {
            errors.spanned(lit, problem);
            None
        }
    }
}

/// `retry_delay = "visibility_timeout"` or `"5s"`.
fn retry_delay(value: &Expr, errors: &mut Errors) -> Option<RetryDelay> {
    let lit = lit_str("retry_delay", value, errors)?;
    match RetryDelay::parse(&lit.value()) {
        Ok(delay) => Some(delay),
        Err(problem) => {
            errors.spanned(lit, problem);
            None
        }
    }
}

/// `retry_delay(base = "100ms", max = "5s")`.
fn exponential(list: &syn::MetaList, errors: &mut Errors) -> Option<RetryDelay> {
    const HELP: &str =
        "exponential backoff is written retry_delay(base = \"100ms\", max = \"30s\")";
    let metas = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(syn::Error::new(e.span(), format!("{e}; {HELP}")));
            return None;
        }
    };
    let (mut base, mut max) = (None, None);
    for meta in &metas {
        let key = path_key(meta.path());
        let slot = match key.as_str() {
            "base" => &mut base,
            "max" => &mut max,
            _ => {
                errors.spanned(meta.path(), format!("unknown key `{key}`; {HELP}"));
                return None;
            }
        };
        let Meta::NameValue(nv) = meta else {
            errors.spanned(meta, HELP);
            return None;
        };
        *slot = Some(lit_str(&key, &nv.value, errors)?.value());
    }
    let (Some(base), Some(max)) = (base, max) else {
        errors.spanned(
            list,
            format!("`retry_delay` needs both `base` and `max`; {HELP}"),
        );
        return None;
    };
    match RetryDelay::exponential(&base, &max) {
        Ok(delay) => Some(delay),
        Err(problem) => {
            errors.spanned(list, format!("`retry_delay`: {problem}"));
            None
        }
    }
}

fn start(value: &Expr, errors: &mut Errors) -> Option<String> {
    let lit = lit_str("start", value, errors)?;
    let text = lit.value();
    if let Some(problem) = stream_rules::start_problem(&text) {
        errors.spanned(lit, problem);
        return None;
    }
    Some(text)
}

fn krate(value: &Expr, errors: &mut Errors) -> Option<syn::Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() => Some(p.path.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match s.parse::<syn::Path>() {
            Ok(path) => Some(path),
            Err(e) => {
                errors.spanned(s, format!("`crate` takes a path to stream_runtime: {e}"));
                None
            }
        },
        other => {
            errors.spanned(
                other,
                "`crate` takes a path to stream_runtime, e.g. crate = \"::my_reexport::stream_runtime\"",
            );
            None
        }
    }
}

/// `ordered = "key"` (or `"none"`).
fn ordered(value: &Expr, errors: &mut Errors) -> Option<bool> {
    let lit = lit_str("ordered", value, errors)?;
    match lit.value().as_str() {
        "key" => Some(true),
        "none" => Some(false),
        other => {
            errors.spanned(
                lit,
                format!(
                    "unknown ordering {other:?}: write `ordered = \"key\"` (messages sharing a \
                     key one at a time, in stream order) or `ordered = \"none\"`"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggestions() {
        assert_eq!(super::closest("strem"), Some("stream"));
        assert_eq!(super::closest("max_retry"), Some("max_retries"));
        assert_eq!(super::closest("zzz"), None);
    }
}
