//! The `oodbox` command line: thin wrappers over the library, one file per subcommand.

mod cli;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    fix_thread_count();
    let args = match cli::parse() {
        Ok(args) => args,
        Err(err) => {
            // Help and version go to stdout with success; a bad command line fails like any
            // other error (exit 1), not with clap's usage code.
            match number_error(&err) {
                Some(message) => eprintln!("error: {message}"),
                None => drop(err.print()),
            }
            return if err.use_stderr() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // Library errors already show their cause; print each cause only once.
            let mut message = String::new();
            for cause in err.chain().map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap's message for `--max-det -3` or `--max-det 2.5` is "invalid digit found in string";
/// say what is wrong instead.
fn number_error(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let value = text(ContextKind::InvalidValue)?;
    if err.kind() != ErrorKind::ValueValidation || !err.to_string().contains("invalid digit") {
        return None;
    }
    let arg = text(ContextKind::InvalidArg).unwrap_or("the option");
    let problem = if value.starts_with('-') && value[1..].parse::<f64>().is_ok() {
        "it must not be negative"
    } else {
        "it must be a whole number"
    };
    Some(format!("invalid value '{value}' for '{arg}': {problem}"))
}

/// Candle reads its thread count from `RAYON_NUM_THREADS` at every matrix product, and when
/// the variable is unset it parses `/proc/cpuinfo` each time: 7% of a `safe` fit, about 50 reads
/// per DETR forward. The variable is set once, before any thread starts, to the count Candle
/// picks (its physical cores); rayon's pool takes the same size.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// By default glibc hands freed blocks above a few hundred KiB back to the kernel, so every
/// layer of a forward pass page-faults its output map in afresh: about 8% of a yolov8n forward
/// pass at 640² on 2 cores. Blocks up to 32 MiB (glibc's ceiling) now come from the heap, and
/// freed heap memory is kept for reuse, at the price of resident memory staying at its peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
