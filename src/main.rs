//! The `oodbox` command line: thin wrappers over the library, one file per subcommand.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let args = cli::Cli::parse();
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
