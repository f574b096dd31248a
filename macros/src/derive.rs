//! `#[derive(ArrowRecord)]`: a struct's Arrow type, its struct column, and its
//! rows as a batch, all from the field types.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Fields, ItemStruct};

pub fn expand(item: &ItemStruct) -> syn::Result<TokenStream> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "`ArrowRecord` cannot be derived for a generic struct",
        ));
    }
    let Fields::Named(named) = &item.fields else {
        return Err(syn::Error::new(
            item.ident.span(),
            "`ArrowRecord` needs a struct with named fields (each field is one Arrow column)",
        ));
    };
    let name = &item.ident;
    let value = quote!(::kit_service::rpc::value);
    let idents: Vec<_> = named
        .named
        .iter()
        .map(|f| f.ident.clone().expect("named fields have names"))
        .collect();
    let names: Vec<String> = idents.iter().map(|i| i.unraw().to_string()).collect();
    let locals: Vec<_> = (0..idents.len())
        .map(|i| format_ident!("__field_{}", i))
        .collect();
    // `<T as ArrowValue>` spanned at the field's type: a field of a type with no
    // Arrow mapping is reported there.
    let as_value: Vec<TokenStream> = named
        .named
        .iter()
        .map(|f| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=> <#ty as ::kit_service::rpc::value::ArrowValue>)
        })
        .collect();
    let types: Vec<_> = named.named.iter().map(|f| &f.ty).collect();

    // Rows -> one Vec per field. A one-field struct collects in place.
    let split_rows = if idents.is_empty() {
        quote!(let _ = rows;)
    } else if idents.len() == 1 {
        let (ident, local) = (&idents[0], &locals[0]);
        quote! {
            let #local: ::std::vec::Vec<_> = rows.into_iter().map(|row| row.#ident).collect();
        }
    } else {
        quote! {
            #( let mut #locals = ::std::vec::Vec::with_capacity(rows.len()); )*
            for row in rows {
                #( #locals.push(row.#idents); )*
            }
        }
    };

    Ok(quote! {
        impl #value::ArrowValue for #name {
            fn data_type() -> ::kit_service::rpc::value::DataType {
                ::kit_service::rpc::value::DataType::Struct(
                    <Self as #value::ArrowRecord>::fields(),
                )
            }

            fn to_column(
                values: ::std::vec::Vec<Self>,
            ) -> ::std::result::Result<#value::ArrayRef, #value::ValueError> {
                let len = values.len();
                let columns = <Self as #value::ArrowRecord>::to_columns(values)?;
                #value::struct_column::<Self>(columns, ::std::option::Option::None, len)
            }

            fn to_nullable_column(
                values: ::std::vec::Vec<::std::option::Option<Self>>,
            ) -> ::std::result::Result<#value::ArrayRef, #value::ValueError> {
                let len = values.len();
                let mut valid = ::std::vec::Vec::with_capacity(len);
                #( let mut #locals = ::std::vec::Vec::with_capacity(len); )*
                for value in values {
                    match value {
                        ::std::option::Option::Some(value) => {
                            valid.push(true);
                            #( #locals.push(::std::option::Option::Some(value.#idents)); )*
                        }
                        ::std::option::Option::None => {
                            valid.push(false);
                            #( #locals.push(::std::option::Option::None); )*
                        }
                    }
                }
                let columns = ::std::vec![#( #as_value::to_nullable_column(#locals)? ),*];
                #value::struct_column::<Self>(
                    columns,
                    ::std::option::Option::Some(#value::NullBuffer::from(valid)),
                    len,
                )
            }

            fn from_cell(
                array: &dyn #value::Array,
                row: usize,
            ) -> ::std::result::Result<::std::option::Option<Self>, #value::ValueError> {
                let columns = #value::Columns::of_struct::<Self>(array)?;
                if columns.is_null(row) {
                    return ::std::result::Result::Ok(::std::option::Option::None);
                }
                ::std::result::Result::Ok(::std::option::Option::Some(Self {
                    #( #idents: columns.cell::<#types>(#names, row)?, )*
                }))
            }

            fn from_column(
                array: &dyn #value::Array,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::std::option::Option<Self>>,
                #value::ValueError,
            > {
                <Self as #value::ArrowRecord>::from_columns(
                    &#value::Columns::of_struct::<Self>(array)?,
                )
            }

            fn top_level_data_type() -> ::kit_service::rpc::value::DataType {
                ::kit_service::rpc::value::DataType::Binary
            }

            fn top_level_to_column(
                values: ::std::vec::Vec<Self>,
            ) -> ::std::result::Result<#value::ArrayRef, #value::ValueError> {
                #value::record_ipc_column::<Self>(
                    values.into_iter().map(::std::option::Option::Some).collect(),
                )
            }

            fn top_level_to_nullable_column(
                values: ::std::vec::Vec<::std::option::Option<Self>>,
            ) -> ::std::result::Result<#value::ArrayRef, #value::ValueError> {
                #value::record_ipc_column::<Self>(values)
            }

            fn top_level_from_cell(
                array: &dyn #value::Array,
                row: usize,
            ) -> ::std::result::Result<::std::option::Option<Self>, #value::ValueError> {
                #value::record_from_ipc_cell::<Self>(array, row)
            }
        }

        impl #value::ArrowRecord for #name {
            fn fields() -> #value::Fields {
                #value::fields_of(::std::vec![#( #as_value::field(#names) ),*])
            }

            fn to_columns(
                rows: ::std::vec::Vec<Self>,
            ) -> ::std::result::Result<::std::vec::Vec<#value::ArrayRef>, #value::ValueError> {
                #split_rows
                ::std::result::Result::Ok(::std::vec![#( #as_value::to_column(#locals)? ),*])
            }

            fn from_columns(
                columns: &#value::Columns<'_>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::std::option::Option<Self>>,
                #value::ValueError,
            > {
                #( let mut #locals = columns.values::<#types>(#names)?; )*
                let mut rows = ::std::vec::Vec::with_capacity(columns.len());
                for row in 0..columns.len() {
                    #( let #locals = #locals.next(); )*
                    if columns.is_null(row) {
                        rows.push(::std::option::Option::None);
                        continue;
                    }
                    rows.push(::std::option::Option::Some(Self {
                        #( #idents: columns.require::<#types>(#names, row, #locals)?, )*
                    }));
                }
                ::std::result::Result::Ok(rows)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_structs_with_named_fields_derive() {
        let tuple: ItemStruct = syn::parse_quote!(
            struct P(i64);
        );
        assert!(
            expand(&tuple)
                .unwrap_err()
                .to_string()
                .contains("named fields")
        );
        let generic: ItemStruct = syn::parse_quote!(
            struct P<T> {
                x: T,
            }
        );
        assert!(
            expand(&generic)
                .unwrap_err()
                .to_string()
                .contains("generic")
        );
    }

    #[test]
    fn fields_keep_their_order_and_wire_names() {
        let item: ItemStruct = syn::parse_quote!(
            struct P {
                r#type: String,
                x: Option<i64>,
            }
        );
        let code = expand(&item).unwrap().to_string();
        let first = code.find("field (\"type\")").expect("raw name unescaped");
        let second = code.find("field (\"x\")").expect("second field");
        assert!(first < second, "{code}");
    }
}
