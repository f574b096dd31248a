//! `kit-service`: the demo protocol, or the conformance protocols with
//! `--conformance`, on the same host entry point a user's service uses.
//! The hidden `--dynamic-demo` hosts the string-declared demo instead, the
//! baseline `kit-bench --phases demo` compares the typed demo with.

#[global_allocator]
static GLOBAL: kit_service::alloc::HugePageAlloc = kit_service::alloc::HugePageAlloc;

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
            "dynamic-demo",
            "Host the string-declared kit.Demo.v1 (the typed demo's benchmark baseline)",
            || vec![kit_service::demo::dynamic_protocol()],
        )
        .main()
}
