//! `kit-service`: the demo protocol, or the conformance protocols with
//! `--conformance`, on the same host entry point a user's service uses.
//! Hidden flags host the conformance suite's auxiliary workers (auth
//! reasons, and the `vgi_rpc.Identity.v2` fixtures).
//! The hidden `--dynamic-demo` hosts the string-declared demo instead, the
//! baseline `kit-bench --phases demo` compares the typed demo with.

#[global_allocator]
static GLOBAL: kit_service::alloc::HugePageAlloc = kit_service::alloc::HugePageAlloc;

use kit_service::conformance::{IdentityWorker, header_authenticator};

fn main() -> std::process::ExitCode {
    kit_service::host::Host::new([kit_service::demo::protocol()])
        .name("kit-service")
        .version(env!("CARGO_PKG_VERSION"))
        .alternative(
            "conformance",
            "Host ConformanceService and conformance.Secondary.v1 instead of the demo protocol",
            kit_service::conformance::protocols,
        )
        .hidden_alternative(
            "conformance-auth-reason",
            "The conformance protocols, refusing every call with the reason its X-Conformance-Auth-Reason header names",
            kit_service::conformance::protocols,
        )
        .authenticator(std::sync::Arc::new(
            kit_service::conformance::AuthReasonWorker,
        ))
        .hidden_alternative(
            "conformance-identity",
            "The conformance protocols plus vgi_rpc.Identity.v2 with the conformance fixture's resolver and minter (header-driven auth: a test fixture, never deploy)",
            || IdentityWorker::Both.protocols(),
        )
        .authenticator(header_authenticator())
        .identity(|| IdentityWorker::Both.identity())
        .hidden_alternative(
            "conformance-identity-introspect-only",
            "As --conformance-identity, with the resolver only (the narrowed protocol)",
            || IdentityWorker::IntrospectOnly.protocols(),
        )
        .authenticator(header_authenticator())
        .identity(|| IdentityWorker::IntrospectOnly.identity())
        .hidden_alternative(
            "conformance-grant",
            "The conformance protocols, conformance.Whoami.v1 and vgi_rpc.Identity.v2 minting and accepting sealed grants under the fixture keys (header-driven auth: a test fixture, never deploy)",
            || IdentityWorker::Grant.protocols(),
        )
        .authenticator(header_authenticator())
        .identity(|| IdentityWorker::Grant.identity())
        .hidden_alternative(
            "dynamic-demo",
            "Host the string-declared kit.Demo.v1 (the typed demo's benchmark baseline)",
            || vec![kit_service::demo::dynamic_protocol()],
        )
        .main()
}
