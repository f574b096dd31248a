//! Adversarial tests: what an attacker or a careless operator does to a
//! running kit-service, on loopback only. Each test names the finding it
//! guards (see `docs/reliability.md`), is bounded in time and size, and stops
//! everything it starts.

mod support;

mod answers;
mod connections;
mod lifecycle;
mod memory;
mod ratelimit;
mod ssrf;
mod store;
mod streams;
mod workers;
