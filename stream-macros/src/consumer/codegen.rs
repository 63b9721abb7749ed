//! Phase 3: the registration. Everything lives in `const _: () = { ... };` and reaches the
//! runtime only through `<crate>::__private`, so users never name `inventory` or this crate.
//!
//! Trait requirements are checked by rustc where the user's types are used, with those
//! types' own spans (axum's `debug_handler` style): a payload that is not `Deserialize`
//! underlines the payload type, a bad return type the return type.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use stream_rules::RetryDelay;
use syn::ItemFn;

use super::args::{Args, MaxRetries};
use super::signature::{span_of, Extra, Signature};

pub fn generate(function: &ItemFn, args: &Args, sig: &Signature) -> TokenStream {
    let krate = &args.krate;
    let ident = &function.sig.ident;
    let name = &args.name;
    let stream = &args.stream;
    let group = &args.group;
    let payload = &sig.payload;
    let payload_name = type_name(payload);
    let tx_type = sig.rest.iter().find_map(|extra| match extra {
        Extra::Tx(ty) => Some(ty),
        _ => None,
    });
    let attributes = attributes(args, tx_type);

    let mut fetch_states = Vec::new();
    let mut clone_states = Vec::new();
    let mut call_args = Vec::new();
    for (index, extra) in sig.rest.iter().enumerate() {
        match extra {
            Extra::Tx(ty) => {
                call_args.push(quote_spanned!(span_of(ty)=> __tx));
            }
            Extra::Message(ty) => {
                call_args.push(quote_spanned!(span_of(ty)=> &__message));
            }
            Extra::State(ty) => {
                let (fetch, clone, arg) = state_argument(index, ty, name);
                fetch_states.push(fetch);
                clone_states.push(clone);
                call_args.push(arg);
            }
        }
    }
    let decode = quote_spanned! {span_of(payload)=>
        __sr::decode::<#payload>(&__message, #payload_name)
    };
    let output = &sig.output;
    let convert = quote_spanned! {span_of(output)=>
        <#output as __sr::HandlerOutput>::into_handler_result
    };

    let body = quote! {
        let __payload = match #decode {
            ::core::result::Result::Ok(payload) => payload,
            ::core::result::Result::Err(error) => {
                return ::core::result::Result::Err(error);
            }
        };
        #convert(#ident(__payload #(, #call_args)*).await)
    };
    let build = match tx_type {
        None => quote! {
            ::core::result::Result::Ok(__sr::handler_fn(move |__message: __sr::Message| {
                #(#clone_states)*
                async move { #body }
            }))
        },
        Some(tx) => {
            let check = quote_spanned! {span_of(tx)=>
                __sr::transactional_handler::<#tx, _>
            };
            quote! {
                let __publisher = <__sr::Publisher as __sr::FromStates>::from_states(__states, #name)?;
                ::core::result::Result::Ok(#check(
                    &__publisher,
                    #group,
                    move |__message: __sr::Message, __tx: &mut #tx| {
                        #(#clone_states)*
                        ::std::boxed::Box::pin(async move { #body })
                    },
                ))
            }
        }
    };

    quote! {
        #function

        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        const _: () = {
            use #krate::__private as __sr;

            fn __stream_runtime_build(
                __states: &__sr::States,
            ) -> __sr::Result<__sr::Handler> {
                #(#fetch_states)*
                #build
            }

            __sr::inventory::submit! {
                __sr::ConsumerDef::__new(
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

/// A `State<T>` (or `Publisher`) argument at `index`: fetching it once when the handler is
/// built, cloning it for each call, and passing it.
pub(super) fn state_argument(
    index: usize,
    ty: &syn::Type,
    name: &str,
) -> (TokenStream, TokenStream, TokenStream) {
    let var = format_ident!("__state_{}", index);
    let fetch = quote_spanned! {span_of(ty)=>
        let #var = <#ty as __sr::FromStates>::from_states(__states, #name)?;
    };
    let clone = quote! {
        let #var = ::core::clone::Clone::clone(&#var);
    };
    (fetch, clone, var.into_token_stream())
}

/// `Attributes::NONE` with each given setting applied by a `const fn` setter.
pub(super) fn attributes(args: &Args, tx_type: Option<&syn::Type>) -> TokenStream {
    let mut out = quote!(__sr::Attributes::NONE);
    let duration = |d: Duration| {
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        quote!(__sr::Duration::new(#secs, #nanos))
    };
    let text = |s: &String| quote!(#s);
    let mut set = |setter: &str, value: Option<TokenStream>| {
        if let Some(value) = value {
            let setter = format_ident!("__{}", setter, span = Span::call_site());
            out = quote!(#out.#setter(#value));
        }
    };
    set(
        "max_retries",
        args.max_retries.map(|m| match m {
            MaxRetries::Limited(n) => quote!(__sr::MaxRetries::Limited(#n)),
            MaxRetries::Unlimited => quote!(__sr::MaxRetries::Unlimited),
        }),
    );
    set("concurrency", args.concurrency.map(|n| quote!(#n)));
    set("visibility_timeout", args.visibility_timeout.map(duration));
    set("poll_interval", args.poll_interval.map(duration));
    set("shutdown_timeout", args.shutdown_timeout.map(duration));
    set(
        "retry_delay",
        args.retry_delay.map(|delay| match delay {
            RetryDelay::VisibilityTimeout => quote!(__sr::RetryDelay::VisibilityTimeout),
            RetryDelay::Fixed(d) => {
                let d = duration(d);
                quote!(__sr::RetryDelay::Fixed(#d))
            }
            RetryDelay::Exponential { base, max } => {
                let (base, max) = (duration(base), duration(max));
                quote!(__sr::RetryDelay::Exponential { base: #base, max: #max })
            }
        }),
    );
    set("start", args.start.as_ref().map(text));
    set("dead_letter", args.dead_letter.as_ref().map(text));
    set("app", args.app.as_ref().map(text));
    set("namespace", args.namespace.as_ref().map(text));
    set("heartbeat", args.heartbeat.map(|on| quote!(#on)));
    set(
        "ordered",
        args.ordered.map(|key| match key {
            true => quote!(__sr::Order::Key),
            false => quote!(__sr::Order::None),
        }),
    );
    set("batch_size", args.batch_size.map(|n| quote!(#n)));
    set("batch_wait", args.batch_wait.map(duration));
    if let Some(tx) = tx_type {
        let database = quote_spanned!(span_of(tx)=> __sr::tx_database::<#tx>());
        out = quote!(#out.__transactional(#database));
    }
    out
}

/// The payload type as written, spaced as rustfmt would (`Vec<u8>`, `my::Order`).
pub(super) fn type_name(ty: &syn::Type) -> String {
    let raw = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let glue_prev = matches!(prev, Some('<' | ':' | '&' | '(' | '['));
            let glue_next = matches!(next, Some('<' | '>' | ':' | ',' | ';' | ')' | ']'));
            if glue_prev || glue_next {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names() {
        let name = |s: &str| super::type_name(&syn::parse_str(s).expect("a type"));
        assert_eq!(name("Order"), "Order");
        assert_eq!(name("my :: Order"), "my::Order");
        assert_eq!(name("Vec<u8>"), "Vec<u8>");
        assert_eq!(
            name("HashMap<String, Vec<(u8, i32)>>"),
            "HashMap<String, Vec<(u8, i32)>>"
        );
        assert_eq!(name("[u8; 4]"), "[u8; 4]");
    }
}
