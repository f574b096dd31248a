//! The macros behind kit-service's typed protocols. Depend on `kit-service`
//! and use them as `kit_service::service` and `kit_service::ArrowRecord`;
//! their documentation, with examples that run, is there.
//!
//! The generated code names the library as `::kit_service`, so this crate is
//! useful only next to it.

mod derive;
mod service;

use proc_macro::TokenStream;

/// Derives `kit_service::ArrowValue` (the struct as one `struct<...>` column)
/// and `kit_service::ArrowRecord` (the struct as a row, each field one column)
/// for a struct with named fields whose types are `ArrowValue`s.
///
/// A field of type `Option<T>` is nullable; every other field is not.
/// Generic, tuple and unit structs are rejected with a compile error.
#[proc_macro_derive(ArrowRecord)]
pub fn derive_arrow_record(input: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(input as syn::ItemStruct);
    derive::expand(&item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Turns a trait of `async fn` methods into a vgi-rpc protocol definition:
/// `#[service(name = "acme.Orders.v1", version = "1.0.0")]`.
///
/// Every method takes `&self`, optionally `ctx: &Ctx`, then its parameters,
/// and returns `Result<X, RpcError>` where `X` picks the method kind
/// (`kit_service::rpc::MethodOutput`). The trait gains a provided method
/// `into_protocol(self) -> Protocol` that serves an implementation, and a
/// typed client `{Trait}Client` is generated next to it.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as service::Args);
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    service::expand(args, item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
