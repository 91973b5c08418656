//! pygateway's native data plane: an APISIX-compatible router and a hyper reverse proxy.
//!
//! Data flows one way: the Python control plane validates APISIX config and compiles it
//! into a [`config::ChangeSet`]; [`server::Gateway::apply`] publishes it to the router and
//! the upstream registry; requests read immutable snapshots and never wait on a writer.
#![deny(missing_docs)]

pub mod config;
pub mod limit;
pub mod logging;
pub mod pipeline;
pub mod router;
pub mod server;
pub mod upstream;

#[cfg(feature = "python")]
mod py;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
