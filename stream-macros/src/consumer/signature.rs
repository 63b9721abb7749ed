//! Phase 2: the handler's signature (D2). The first argument is the payload; after it come
//! an optional `&Message`, a `Publisher` and any number of `State<T>` arguments, in any
//! order. What the
//! syntax alone can tell is checked here; trait requirements (`Deserialize`, `State<T>`,
//! `Result<(), E: Display>`) are checked by rustc on assertions spanned at the user's
//! types (see `codegen`).

use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use super::Errors;

/// A checked handler signature.
pub struct Signature {
    /// The payload's type.
    pub payload: Type,
    /// The arguments after the payload, in order.
    pub rest: Vec<Extra>,
    /// The return type.
    pub output: Type,
}

/// An argument after the payload.
pub enum Extra {
    /// `&Message` (the type as written, for spans).
    Message(Type),
    /// Anything else: must be `State<T>` or `Publisher` (checked by trait).
    State(Type),
    /// `&mut T` of a transactional consumer: the transaction (`T` checked by trait).
    Tx(Type),
}

const PAYLOAD_HELP: &str = "a consumer's first argument is the payload it decodes, e.g. \
                            `order: Order` (any `serde::Deserialize` type, or `Raw` for the bytes)";

/// Checks the function; `None` when it cannot be a consumer (reported in `errors`).
pub fn check(function: &ItemFn, transactional: bool, errors: &mut Errors) -> Option<Signature> {
    let before = errors.count();
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "#[consumer] needs an `async fn`: write `async fn` here",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, "a consumer cannot be a `const fn`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(unsafety, "a consumer cannot be an `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "a consumer cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a consumer cannot be generic: the registry needs one concrete function; \
             use concrete types (a lifetime on `&Message` is not needed either)",
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.spanned(
            where_clause,
            "a consumer cannot have a `where` clause: use concrete types",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a consumer cannot be variadic");
    }

    let mut inputs = sig.inputs.iter();
    let payload = match inputs.next() {
        None => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                format!("missing payload argument: {PAYLOAD_HELP}"),
            ));
            None
        }
        Some(FnArg::Receiver(receiver)) => {
            errors.spanned(receiver, self_error());
            None
        }
        Some(FnArg::Typed(arg)) => check_payload(&arg.ty, errors),
    };

    let mut rest = Vec::new();
    let mut message_seen = false;
    let mut tx_seen = false;
    for input in inputs {
        let ty = match input {
            FnArg::Receiver(receiver) => {
                errors.spanned(receiver, self_error());
                continue;
            }
            FnArg::Typed(arg) => &*arg.ty,
        };
        match ty {
            Type::Reference(reference)
                if reference.mutability.is_some() && !is_message(&reference.elem) =>
            {
                if !transactional {
                    errors.spanned(
                        ty,
                        "a `&mut` argument is the transaction of a transactional consumer: add \
                         `transactional` to #[consumer(...)], and take `&mut PostgresTx` or \
                         `&mut SqliteTx`",
                    );
                } else if let Some(lifetime) = &reference.lifetime {
                    errors.spanned(lifetime, "take the transaction without a lifetime");
                } else if tx_seen {
                    errors.spanned(ty, "the transaction is taken twice; take it once");
                } else {
                    tx_seen = true;
                    rest.push(Extra::Tx((*reference.elem).clone()));
                }
            }
            Type::Reference(reference) => {
                if !is_message(&reference.elem) {
                    errors.spanned(
                        ty,
                        "a consumer's only reference argument is `&Message`; take shared \
                         state as `State<T>`, by value",
                    );
                } else if let Some(mutability) = &reference.mutability {
                    errors.spanned(
                        mutability,
                        "take the message as `&Message`: a consumer gets a shared reference",
                    );
                } else if let Some(lifetime) = &reference.lifetime {
                    errors.spanned(
                        lifetime,
                        "take the message as `&Message`, without a lifetime",
                    );
                } else if message_seen {
                    errors.spanned(ty, "`&Message` is taken twice; take it once");
                } else {
                    message_seen = true;
                    rest.push(Extra::Message(ty.clone()));
                }
            }
            ty if is_message(ty) => errors.spanned(
                ty,
                "take the message by reference, as `&Message`, after the payload",
            ),
            Type::ImplTrait(_) => errors.spanned(
                ty,
                "a consumer cannot be generic: `impl Trait` arguments are not allowed",
            ),
            ty => rest.push(Extra::State(ty.clone())),
        }
    }

    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => {
            errors.push(syn::Error::new(
                sig.paren_token.span.close(),
                "missing return type: a consumer returns `Result<(), E>` for any error type \
                 `E` that implements `Display` (return `HandlerError::permanent(..)` to skip \
                 retries)",
            ));
            None
        }
    };

    if transactional && !tx_seen {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a `transactional` consumer takes its transaction as an argument: add \
             `tx: &mut PostgresTx` (Postgres backend) or `tx: &mut SqliteTx` (SQLite)",
        ));
    }

    if errors.count() > before {
        return None;
    }
    Some(Signature {
        payload: payload?,
        rest,
        output: output?,
    })
}

fn self_error() -> &'static str {
    "a consumer cannot take `self`: write a free `async fn`, and take shared state as `State<T>`"
}

fn check_payload(ty: &Type, errors: &mut Errors) -> Option<Type> {
    match ty {
        Type::Reference(reference) if is_message(&reference.elem) => {
            errors.spanned(
                ty,
                format!("missing payload argument before `&Message`: {PAYLOAD_HELP}"),
            );
            None
        }
        Type::Reference(_) => {
            errors.spanned(
                ty,
                format!("the payload is taken by value, not by reference: {PAYLOAD_HELP}"),
            );
            None
        }
        Type::ImplTrait(_) => {
            errors.spanned(
                ty,
                "a consumer cannot be generic: the payload must be a concrete type",
            );
            None
        }
        ty if is_state(ty) => {
            errors.spanned(
                ty,
                format!("missing payload argument before `State<..>`: {PAYLOAD_HELP}"),
            );
            None
        }
        ty if is_publisher(ty) => {
            errors.spanned(
                ty,
                format!("missing payload argument before `Publisher`: {PAYLOAD_HELP}"),
            );
            None
        }
        ty => Some(ty.clone()),
    }
}

/// `Message` or a path ending in `::Message`, without generic arguments.
fn is_message(ty: &Type) -> bool {
    is_plain(ty, "Message")
}

/// `Publisher` (or a path ending in `::Publisher`): the handle to publish with.
fn is_publisher(ty: &Type) -> bool {
    is_plain(ty, "Publisher")
}

/// A path ending in `name`, without generic arguments.
fn is_plain(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == name && s.arguments.is_none()),
        Type::Paren(inner) => is_plain(&inner.elem, name),
        Type::Group(inner) => is_plain(&inner.elem, name),
        _ => false,
    }
}

/// `State<..>` (or a path ending in `::State<..>`): shared state, not a payload.
fn is_state(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "State" && !s.arguments.is_none()),
        _ => false,
    }
}

/// The span of a type, for `quote_spanned!`.
pub fn span_of(ty: &Type) -> proc_macro2::Span {
    ty.span()
}
