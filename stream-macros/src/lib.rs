//! The `#[consumer]` attribute. Use it through `stream_runtime::consumer`.
use proc_macro::TokenStream;

#[proc_macro_attribute]
pub fn consumer(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
