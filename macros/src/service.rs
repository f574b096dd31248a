//! `#[service]`: one trait -> the server's dispatch and schemas, and a typed client.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, Ident, ItemTrait, Lit, LitStr, Meta, Pat, PathArguments,
    ReturnType, TraitItem, TraitItemFn, Type, TypeParamBound,
};

/// `name = "acme.Orders.v1", version = "1.0.0"`.
pub struct Args {
    name: LitStr,
    version: Option<LitStr>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut name = None;
        let mut version = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            } else if meta.path.is_ident("version") {
                version = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            } else {
                Err(meta.error("expected `name = \"...\"` or `version = \"MAJOR.MINOR.PATCH\"`"))
            }
        });
        syn::parse::Parser::parse2(parser, input.parse::<TokenStream>()?)?;
        let name = name.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing `name = \"...\"`, the protocol name (e.g. `acme.Orders.v1`)",
            )
        })?;
        if !valid_protocol_name(&name.value()) {
            return Err(syn::Error::new(
                name.span(),
                "a protocol name matches ^[A-Za-z_][A-Za-z0-9_.]*$ and is at most 255 bytes",
            ));
        }
        if let Some(version) = &version
            && !valid_version(&version.value())
        {
            return Err(syn::Error::new(
                version.span(),
                "a protocol version is canonical semver MAJOR.MINOR.PATCH",
            ));
        }
        Ok(Args { name, version })
    }
}

fn valid_protocol_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn valid_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && !(p.len() > 1 && p.starts_with('0'))
                && p.parse::<u64>().is_ok()
        })
}

/// One trait method, as the generated code needs it.
struct Method {
    ident: Ident,
    /// The wire name (a raw identifier's name without `r#`).
    name: String,
    takes_ctx: bool,
    params: Vec<(Ident, String, Type)>,
    /// `X` of `Result<X, RpcError>`.
    output: Type,
    doc: String,
}

pub fn expand(args: Args, mut item: ItemTrait) -> syn::Result<TokenStream> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a `#[service]` trait cannot be generic",
        ));
    }
    let mut methods = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for trait_item in &mut item.items {
        let TraitItem::Fn(function) = trait_item else {
            push_error(
                &mut errors,
                syn::Error::new(
                    trait_item.span(),
                    "a `#[service]` trait holds only `async fn` methods",
                ),
            );
            continue;
        };
        match method(function) {
            Ok(method) => {
                desugar(function);
                methods.push(method);
            }
            Err(error) => push_error(&mut errors, error),
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }
    // The server shares one implementation across requests and runtime threads.
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits
        .push(TypeParamBound::Lifetime(syn::parse_quote!('static)));
    item.colon_token.get_or_insert_with(Default::default);

    let into_protocol = into_protocol(&args, &item.ident, &methods);
    item.items.push(syn::parse2(into_protocol)?);
    let client = client(&args, &item, &methods);
    Ok(quote! {
        #item
        #client
    })
}

fn push_error(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}

fn method(function: &TraitItemFn) -> syn::Result<Method> {
    let signature = &function.sig;
    let ident = signature.ident.clone();
    let name = ident.unraw().to_string();
    if name == "into_protocol" {
        return Err(syn::Error::new(
            ident.span(),
            "`into_protocol` is the method `#[service]` adds to the trait; rename this method",
        ));
    }
    if CLIENT_ITEMS.contains(&name.as_str()) {
        return Err(syn::Error::new(
            ident.span(),
            format!("`{name}` is a method of the generated client; rename this method"),
        ));
    }
    if name.starts_with('_') {
        return Err(syn::Error::new(
            ident.span(),
            "a vgi-rpc method name must not start with `_`",
        ));
    }
    if signature.asyncness.is_none() {
        return Err(syn::Error::new(
            signature.fn_token.span(),
            "methods of a `#[service]` trait are `async fn`",
        ));
    }
    if !signature.generics.params.is_empty() || signature.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "methods of a `#[service]` trait cannot be generic",
        ));
    }
    let mut inputs = signature.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        _ => {
            return Err(syn::Error::new(
                signature.inputs.span(),
                "methods of a `#[service]` trait take `&self` first",
            ));
        }
    }
    let mut takes_ctx = false;
    let mut params = Vec::new();
    for (position, input) in inputs.enumerate() {
        let FnArg::Typed(typed) = input else {
            unreachable!("only the first input can be a receiver")
        };
        if position == 0 && is_ctx(&typed.ty) {
            takes_ctx = true;
            continue;
        }
        let Pat::Ident(pattern) = &*typed.pat else {
            return Err(syn::Error::new(
                typed.pat.span(),
                "a parameter is a plain name (it is the Arrow column's name)",
            ));
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new(
                reference.span(),
                "parameters are owned values (`String`, not `&str`); only `ctx: &Ctx` is borrowed",
            ));
        }
        let param = pattern.ident.clone();
        let param_name = param.unraw().to_string();
        params.push((param, param_name, (*typed.ty).clone()));
    }
    let output = result_ok_type(&signature.output)?;
    Ok(Method {
        ident,
        name,
        takes_ctx,
        params,
        output,
        doc: doc_text(&function.attrs),
    })
}

/// `&Ctx` (any path ending in `Ctx`).
fn is_ctx(ty: &Type) -> bool {
    let Type::Reference(reference) = ty else {
        return false;
    };
    let Type::Path(path) = &*reference.elem else {
        return false;
    };
    path.path.segments.last().is_some_and(|s| s.ident == "Ctx")
}

/// `X` of `-> Result<X, E>`.
fn result_ok_type(output: &ReturnType) -> syn::Result<Type> {
    let error =
        |span: Span| syn::Error::new(span, "a `#[service]` method returns `Result<T, RpcError>`");
    let ReturnType::Type(_, ty) = output else {
        return Err(error(output.span()));
    };
    let Type::Path(path) = &**ty else {
        return Err(error(ty.span()));
    };
    let Some(last) = path.path.segments.last() else {
        return Err(error(ty.span()));
    };
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return Err(error(ty.span()));
    };
    if last.ident != "Result" || arguments.args.len() != 2 {
        return Err(error(ty.span()));
    }
    match arguments.args.first() {
        Some(GenericArgument::Type(ok)) => Ok(ok.clone()),
        _ => Err(error(ty.span())),
    }
}

/// The doc comment's lines, each without the one space `///` leaves.
fn doc_text(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(pair) => match &pair.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(text),
                    ..
                }) => Some(text.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).to_string())
        .collect();
    lines.join("\n").trim().to_string()
}

/// `async fn f(..) -> R` becomes `fn f(..) -> impl Future<Output = R> + Send`,
/// so the server can hold every method's future across threads.
fn desugar(function: &mut TraitItemFn) {
    let signature = &mut function.sig;
    signature.asyncness = None;
    let output = match &signature.output {
        ReturnType::Type(_, ty) => quote!(#ty),
        ReturnType::Default => quote!(()),
    };
    signature.output = syn::parse_quote! {
        -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
    };
    if let Some(body) = &function.default {
        function.default = Some(syn::parse_quote!({ async move #body }));
    }
}

/// `<T as ArrowValue>::top_level_field("name")` for each parameter, spanned at its type.
fn param_fields(method: &Method) -> Vec<TokenStream> {
    method
        .params
        .iter()
        .map(|(_, name, ty)| {
            quote_spanned! {ty.span()=>
                <#ty as ::kit_service::rpc::value::ArrowValue>::top_level_field(#name)
            }
        })
        .collect()
}

fn into_protocol(args: &Args, trait_ident: &Ident, methods: &[Method]) -> TokenStream {
    let protocol = &args.name;
    let version = args
        .version
        .as_ref()
        .map(|version| quote!(let builder = builder.version(#version);));
    let registrations = methods.iter().map(|method| {
        let Method {
            ident,
            name,
            takes_ctx,
            params,
            output,
            doc,
        } = method;
        let fields = param_fields(method);
        let locals: Vec<_> = (0..params.len())
            .map(|i| format_ident!("__param_{}", i))
            .collect();
        let decodes =
            params
                .iter()
                .zip(&locals)
                .enumerate()
                .map(|(index, ((_, param, ty), local))| {
                    quote_spanned! {ty.span()=>
                        let #local = args.decode::<#ty>(#name, #index, #param)?;
                    }
                });
        let ctx = takes_ctx.then(|| quote!(&ctx,));
        let register = quote_spanned! {output.span()=>
            <#output as ::kit_service::rpc::typed::MethodOutput>::register
        };
        quote! {
            let builder = {
                let service = ::std::sync::Arc::clone(&service);
                #register(
                    builder,
                    #name,
                    ::kit_service::rpc::value::schema_of(::std::vec![#(#fields),*]),
                    move |ctx: ::kit_service::Ctx, args: ::kit_service::Args| {
                        let service = ::std::sync::Arc::clone(&service);
                        async move {
                            #(#decodes)*
                            let _ = (&args, &ctx);
                            <Self as #trait_ident>::#ident(&*service, #ctx #(#locals),*).await
                        }
                    },
                )
                .doc(#name, #doc)
            };
        }
    });
    let doc = format!(
        "Serves this implementation as the `{}` protocol (schemas generated from the method signatures).",
        protocol.value()
    );
    quote! {
        #[doc = #doc]
        fn into_protocol(self) -> ::kit_service::Protocol
        where
            Self: ::core::marker::Sized,
        {
            let service = ::std::sync::Arc::new(self);
            let builder = ::kit_service::Protocol::builder(#protocol);
            #version
            #(#registrations)*
            match builder.build() {
                ::std::result::Result::Ok(protocol) => protocol,
                // Names and versions were checked when the macro ran, and a
                // trait cannot declare a method twice.
                ::std::result::Result::Err(errors) => {
                    ::std::panic!("`#[service]` built an invalid protocol: {errors:?}")
                }
            }
        }
    }
}

/// Names the generated client keeps for itself.
const CLIENT_ITEMS: [&str; 3] = ["new", "connect", "client"];

/// `{Trait}Client`: one async method per trait method, typed arguments in,
/// typed results out, over `kit_service::client::Client`.
fn client(args: &Args, item: &ItemTrait, methods: &[Method]) -> TokenStream {
    let visibility = &item.vis;
    let trait_ident = &item.ident;
    let client_ident = format_ident!("{}Client", trait_ident);
    let protocol = &args.name;
    let version = match &args.version {
        Some(version) => quote!(::core::option::Option::Some(#version)),
        None => quote!(::core::option::Option::None),
    };
    let calls = methods.iter().map(|method| {
        let Method {
            ident,
            name,
            params,
            output,
            doc,
            ..
        } = method;
        let fields = param_fields(method);
        let arguments = params.iter().map(|(ident, _, ty)| quote!(#ident: #ty));
        let columns = params.iter().map(|(ident, _, ty)| {
            quote_spanned! {ty.span()=>
                <#ty as ::kit_service::rpc::value::ArrowValue>::top_level_to_column(::std::vec![#ident])
            }
        });
        let client_output = quote_spanned! {output.span()=>
            <#output as ::kit_service::client::typed::ClientOutput>
        };
        let summary = format!("Calls `{name}` of `{}`.", protocol.value());
        let doc = if doc.is_empty() {
            quote!(#[doc = #summary])
        } else {
            quote!(#[doc = #doc] #[doc = ""] #[doc = #summary])
        };
        quote! {
            #doc
            pub async fn #ident(
                &self,
                #(#arguments),*
            ) -> ::std::result::Result<#client_output::Reply, ::kit_service::client::ClientError> {
                static SCHEMA: ::std::sync::OnceLock<::kit_service::rpc::value::SchemaRef> =
                    ::std::sync::OnceLock::new();
                let params = ::kit_service::client::typed::params(
                    &SCHEMA,
                    || ::std::vec![#(#fields),*],
                    ::std::vec![#(#columns),*],
                )?;
                #client_output::call(&self.client, Self::PROTOCOL, #name, params).await
            }
        }
    });
    let doc = format!(
        "Typed client of the `{}` protocol, generated from [`{trait_ident}`]: one method per protocol method.",
        protocol.value()
    );
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #visibility struct #client_ident {
            client: ::kit_service::client::Client,
        }

        impl #client_ident {
            /// The protocol name.
            pub const PROTOCOL: &'static str = #protocol;
            /// The protocol version, sent as `vgi_rpc.protocol_version`.
            pub const VERSION: ::core::option::Option<&'static str> = #version;

            /// Calls the protocol through `client`, declaring [`Self::VERSION`].
            pub fn new(client: ::kit_service::client::Client) -> Self {
                let client = match Self::VERSION {
                    ::core::option::Option::Some(version) => {
                        client.with_protocol_version(Self::PROTOCOL, version)
                    }
                    ::core::option::Option::None => client,
                };
                Self { client }
            }

            /// A client of the server at `base_url` (with its path prefix, if any).
            pub fn connect(
                base_url: &str,
            ) -> ::std::result::Result<Self, ::kit_service::client::ClientError> {
                ::kit_service::client::Client::new(base_url).map(Self::new)
            }

            /// The untyped client underneath.
            pub fn client(&self) -> &::kit_service::client::Client {
                &self.client
            }

            #(#calls)*
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> syn::Result<Args> {
        syn::parse_str::<Args>(text)
    }

    fn expand_error(item: ItemTrait) -> String {
        expand(args(r#"name = "a.B.v1""#).unwrap(), item)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn arguments_are_checked_when_the_macro_runs() {
        let parsed = args(r#"name = "acme.Orders.v1", version = "1.2.3""#).unwrap();
        assert_eq!(parsed.name.value(), "acme.Orders.v1");
        assert_eq!(parsed.version.unwrap().value(), "1.2.3");
        assert!(args(r#"version = "1.0.0""#).is_err());
        assert!(args(r#"name = "9bad""#).is_err());
        assert!(args(r#"name = "a/b""#).is_err());
        assert!(args(r#"name = "ok", version = "1.0""#).is_err());
        assert!(args(r#"name = "ok", version = "01.0.0""#).is_err());
        assert!(args(r#"name = "ok", colour = "red""#).is_err());
    }

    #[test]
    fn the_ok_type_of_the_result_picks_the_method_kind() {
        let output: ReturnType = syn::parse_quote!(-> Result<Produce<Count>, RpcError>);
        let ok = result_ok_type(&output).unwrap();
        assert_eq!(quote!(#ok).to_string(), "Produce < Count >");
        let output: ReturnType = syn::parse_quote!(-> std::result::Result<(), RpcError>);
        let ok = result_ok_type(&output).unwrap();
        assert_eq!(quote!(#ok).to_string(), "()");
        for bad in [
            quote!(-> i64),
            quote!(-> Option<i64>),
            quote!(-> Result<i64>),
            quote!(),
        ] {
            let output: ReturnType = syn::parse2(bad.clone()).unwrap();
            assert!(result_ok_type(&output).is_err(), "{bad}");
        }
    }

    #[test]
    fn doc_comments_become_the_method_doc() {
        let function: TraitItemFn = syn::parse_quote! {
            /// Adds two integers.
            ///
            /// Overflow is an error.
            async fn add(&self, a: i64) -> Result<i64, RpcError>;
        };
        assert_eq!(
            doc_text(&function.attrs),
            "Adds two integers.\n\nOverflow is an error."
        );
    }

    #[test]
    fn the_context_is_found_by_type_and_skipped_as_a_parameter() {
        let function: TraitItemFn = syn::parse_quote! {
            async fn add(&self, ctx: &kit_service::Ctx, a: i64, r#type: String) -> Result<i64, RpcError>;
        };
        let parsed = method(&function).unwrap();
        assert!(parsed.takes_ctx);
        let names: Vec<&str> = parsed.params.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(names, ["a", "type"]);
        let function: TraitItemFn = syn::parse_quote! {
            async fn ping(&self) -> Result<(), RpcError>;
        };
        assert!(!method(&function).unwrap().takes_ctx);
    }

    #[test]
    fn unsupported_signatures_are_compile_errors() {
        let cases: Vec<(TraitItemFn, &str)> = vec![
            (
                syn::parse_quote!(
                    fn add(&self, a: i64) -> Result<i64, RpcError>;
                ),
                "async fn",
            ),
            (
                syn::parse_quote!(
                    async fn add(self, a: i64) -> Result<i64, RpcError>;
                ),
                "`&self` first",
            ),
            (
                syn::parse_quote!(
                    async fn add(&self, a: &str) -> Result<i64, RpcError>;
                ),
                "owned values",
            ),
            (
                syn::parse_quote!(
                    async fn add(&self, (a, b): (i64, i64)) -> Result<i64, RpcError>;
                ),
                "plain name",
            ),
            (
                syn::parse_quote!(
                    async fn add<T>(&self, a: T) -> Result<i64, RpcError>;
                ),
                "generic",
            ),
            (
                syn::parse_quote!(
                    async fn _hidden(&self) -> Result<(), RpcError>;
                ),
                "start with `_`",
            ),
            (
                syn::parse_quote!(
                    async fn connect(&self) -> Result<(), RpcError>;
                ),
                "generated client",
            ),
            (
                syn::parse_quote!(
                    async fn into_protocol(&self) -> Result<(), RpcError>;
                ),
                "rename this method",
            ),
        ];
        for (function, expected) in cases {
            let error = method(&function).err().expect("an error").to_string();
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        }
        let generic: ItemTrait = syn::parse_quote!(
            trait T<X> {}
        );
        assert!(expand_error(generic).contains("cannot be generic"));
        let with_const: ItemTrait = syn::parse_quote!(
            trait T {
                const N: usize;
                fn sync(&self);
            }
        );
        let error = expand_error(with_const);
        assert!(error.contains("only `async fn`"), "{error}");
    }

    #[test]
    fn expansion_desugars_methods_and_adds_server_and_client() {
        let item: ItemTrait = syn::parse_quote! {
            pub trait Demo {
                /// Adds.
                async fn add(&self, ctx: &Ctx, a: i64, b: i64) -> Result<i64, RpcError>;
            }
        };
        let code = expand(
            args(r#"name = "kit.Demo.v1", version = "1.0.0""#).unwrap(),
            item,
        )
        .unwrap()
        .to_string();
        for expected in [
            "impl :: core :: future :: Future < Output = Result < i64 , RpcError > > + :: core :: marker :: Send",
            "fn into_protocol (self)",
            "pub struct DemoClient",
            "args . decode :: < i64 > (\"add\" , 0usize , \"a\")",
            "with_protocol_version",
            "pub async fn add (& self , a : i64 , b : i64)",
        ] {
            assert!(code.contains(expected), "missing {expected:?} in {code}");
        }
    }
}
