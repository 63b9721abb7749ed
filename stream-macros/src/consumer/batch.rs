//! Batch consumers: a handler taking `Vec<T>` (with `batch_size`) or `Batch<T>` gets up to
//! `batch_size` messages per call. Checked after the signature (what makes a handler a
//! batch handler, and what it may not take then), generated beside the per-message
//! registration.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Expr, ItemFn, Type};

use super::args::Args;
use super::codegen::{attributes, state_argument, type_name};
use super::signature::{span_of, Extra, Signature};
use super::Errors;

/// How the handler takes its batch.
pub enum Kind {
    /// `Vec<T>`: the payloads alone.
    Vec,
    /// `Batch<T>`: each payload beside its message.
    Batch,
}

/// A checked batch argument.
pub struct BatchArg {
    /// `T`, the type each payload decodes to.
    pub element: Type,
    pub kind: Kind,
}

/// `batch_size = N`: from 1 to the runtime's largest batch.
pub fn batch_size(value: &Expr, errors: &mut Errors) -> Option<usize> {
    super::args::whole_number(
        "batch_size",
        stream_rules::BATCH_SIZE_EXPECTED,
        stream_rules::batch_size_problem,
        value,
        errors,
    )
}

/// The single type argument of a path type whose last segment is `name` (`Vec<T>`,
/// `stream_runtime::Batch<T>`).
fn argument_of<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if path.qself.is_some() || last.ident != name {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next()) {
        (Some(ty), None) => Some(ty),
        _ => None,
    }
}

/// Whether the consumer takes a batch, and what; `None` for a per-message consumer or
/// when the batch is misused (reported in `errors`).
pub fn check(args: &Args, sig: &Signature, errors: &mut Errors) -> Option<BatchArg> {
    let as_batch = argument_of(&sig.payload, "Batch").map(|element| (element, Kind::Batch));
    let as_vec = || {
        argument_of(&sig.payload, "Vec")
            .filter(|_| args.batch_size.is_some())
            .map(|element| (element, Kind::Vec))
    };
    let batch = as_batch.or_else(as_vec).map(|(element, kind)| BatchArg {
        element: element.clone(),
        kind,
    });
    let Some(batch) = batch else {
        if args.batch_size.is_some() || args.batch_wait.is_some() {
            let key = if args.batch_size.is_some() {
                "batch_size"
            } else {
                "batch_wait"
            };
            let hint = if args.batch_size.is_none() {
                ", and set `batch_size = N`"
            } else {
                ""
            };
            errors.spanned(
                &sig.payload,
                format!(
                    "`{key}` is for batch handlers: take the messages as `Vec<T>` (the payloads) \
                     or `Batch<T>` (each payload with its message){hint}, or remove `{key}`"
                ),
            );
        }
        return None;
    };
    let before = errors.count();
    if args.transactional {
        errors.spanned(
            &sig.payload,
            "a batch handler cannot be `transactional`: take one message per call with \
             `transactional`, or remove `transactional` and make the batch's writes idempotent",
        );
    }
    if args.ordered == Some(true) {
        errors.spanned(
            &sig.payload,
            "a batch handler cannot be `ordered = \"key\"`: a batch holds several messages of \
             one key at once; take one message per call to order by key",
        );
    }
    if args.heartbeat == Some(true) {
        errors.spanned(
            &sig.payload,
            "a batch handler cannot use `heartbeat`: give it a `visibility_timeout` longer than \
             a batch takes, or take one message per call",
        );
    }
    for extra in &sig.rest {
        match extra {
            Extra::Message(ty) => errors.spanned(
                ty,
                "a batch handler takes no `&Message`: take `Batch<T>` instead of `Vec<T>` to see \
                 each payload's message (`for item in &batch { item.message.id ... }`)",
            ),
            // Reported by the signature check (`&mut` without `transactional`) or above.
            Extra::Tx(_) => {}
            Extra::State(_) => {}
        }
    }
    (errors.count() == before).then_some(batch)
}

/// The registration of a batch consumer.
pub fn generate(function: &ItemFn, args: &Args, sig: &Signature, batch: &BatchArg) -> TokenStream {
    let krate = &args.krate;
    let ident = &function.sig.ident;
    let name = &args.name;
    let stream = &args.stream;
    let group = &args.group;
    let element = &batch.element;
    let element_name = type_name(element);
    let payload_name = type_name(&sig.payload);
    let attributes = attributes(args, None);

    let mut fetch_states = Vec::new();
    let mut clone_states = Vec::new();
    let mut call_args = Vec::new();
    for (index, extra) in sig.rest.iter().enumerate() {
        if let Extra::State(ty) = extra {
            let (fetch, clone, arg) = state_argument(index, ty, name);
            fetch_states.push(fetch);
            clone_states.push(clone);
            call_args.push(arg);
        }
    }
    let argument = match batch.kind {
        Kind::Vec => quote!(__batch.into_payloads()),
        Kind::Batch => quote!(__batch),
    };
    let output = &sig.output;
    let convert = quote_spanned! {span_of(output)=>
        <#output as __sr::BatchOutput>::into_batch_result
    };
    let wrap = quote_spanned! {span_of(element)=>
        __sr::batch_handler_fn::<#element, _, _>
    };

    quote! {
        #function

        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        const _: () = {
            use #krate::__private as __sr;

            fn __stream_runtime_build(
                __states: &__sr::States,
            ) -> __sr::Result<__sr::BatchHandler> {
                #(#fetch_states)*
                ::core::result::Result::Ok(#wrap(
                    #element_name,
                    move |__batch: __sr::Batch<#element>| {
                        #(#clone_states)*
                        async move { #convert(#ident(#argument #(, #call_args)*).await) }
                    },
                ))
            }

            __sr::inventory::submit! {
                __sr::ConsumerDef::__new_batch(
                    #name,
                    #stream,
                    #group,
                    #attributes,
                    __sr::Location {
                        file: ::core::file!(),
                        line: ::core::line!(),
                    },
                    #payload_name,
                    __stream_runtime_build,
                )
            }
        };
    }
}
