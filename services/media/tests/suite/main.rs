//! The media engine's tests against real files, one module per area, in one binary. The memory
//! test has a binary of its own: it reads the process's memory.

mod chunks;
mod fidelity;
mod hostile;
mod instant;
mod ladder;
mod live_ingest;
mod pipeline;
mod quality;
mod support;
