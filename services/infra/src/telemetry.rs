//! Tracing set-up in one place: `VTX_LOG` filters (default `info`), `VTX_LOG_FORMAT=json` for
//! structured logs, human-readable otherwise.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("VTX_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,lapin=warn,aws=warn,h2=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = if std::env::var("VTX_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = res;
}
