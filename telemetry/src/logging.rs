//! Logs through `tracing` on standard error, for people (`human`) or for log pipelines (`json`,
//! one object per line with the span fields, so every line inside an epoch names it).

/// The log format of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Targets that are too chatty at `info` for a streaming job.
const DEFAULT_FILTER: &str =
    "info,deltalake=warn,datafusion=warn,buoyant_kernel=warn,delta_kernel=warn";

/// Installs the process's subscriber; `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal: a file or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
