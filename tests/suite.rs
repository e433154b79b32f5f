//! The end-to-end tests, one module per area, in one binary (each binary links the whole
//! stack). The chaos test has a binary of its own.

mod browser;
mod e2e;
mod experiments;
mod fidelity;
mod gateway;
mod hotness;
mod operations;
mod pipeline;
mod webhooks;
