//! `#[consumer(...)]` in three phases, after serde_derive: parse the arguments
//! ([`args`]), check the function's signature ([`signature`]), generate the registration
//! ([`codegen`]). Errors of the first two phases are accumulated so the user sees them all;
//! on any error the function is still emitted unchanged beside `compile_error!` (as
//! tokio-macros does), so the rest of the crate and IDEs keep working.

mod args;
mod batch;
mod codegen;
mod signature;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Expands `#[consumer(args)] item`.
pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(e) => {
            let mut out = syn::Error::new(
                e.span(),
                "#[consumer] applies to an `async fn` (a function taking the payload)",
            )
            .to_compile_error();
            out.extend(item);
            return out;
        }
    };

    let mut errors = Errors::default();
    let args = args::parse(args, &function.sig.ident, &mut errors);
    let transactional = args.as_ref().is_some_and(|a| a.transactional);
    let signature = signature::check(&function, transactional, &mut errors);
    let batch = match (&args, &signature) {
        (Some(args), Some(signature)) => batch::check(args, signature, &mut errors),
        _ => None,
    };

    match (errors.finish(), args, signature) {
        (None, Some(args), Some(signature)) => match batch {
            Some(batch) => batch::generate(&function, &args, &signature, &batch),
            None => codegen::generate(&function, &args, &signature),
        },
        (error, _, _) => {
            let mut out = function.to_token_stream();
            if let Some(error) = error {
                out.extend(error.to_compile_error());
            }
            out
        }
    }
}

/// Errors accumulated across phases (serde_derive's `Ctxt`).
#[derive(Default)]
pub(crate) struct Errors {
    first: Option<syn::Error>,
    count: usize,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.count += 1;
        match &mut self.first {
            Some(first) => first.combine(error),
            None => self.first = Some(error),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    fn finish(self) -> Option<syn::Error> {
        self.first
    }
}
