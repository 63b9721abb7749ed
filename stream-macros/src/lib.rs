//! The `#[consumer]` attribute. Use it through `stream_runtime::consumer`, which documents it.
use proc_macro::TokenStream;

mod consumer;

/// Registers an `async fn` as a consumer of a stream. Documented on `stream_runtime::consumer`.
#[proc_macro_attribute]
pub fn consumer(args: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(args.into(), item.into()).into()
}
