//! `kit-service`: the demo protocol, or the conformance protocols with
//! `--conformance`, on the same host entry point a user's service uses.

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
        .main()
}
