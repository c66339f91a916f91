//! The `oodbox` command line: thin wrappers over the library, one file per subcommand.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
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
