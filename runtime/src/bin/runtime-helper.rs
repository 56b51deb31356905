//! Stand-alone helper executable for the runtime's integration tests; the peer binary
//! calls `runtime::helper::main` itself.
//!
//! `runtime-helper exec <root> <id> <args...>` runs `runtime::exec` instead, so tests can
//! exercise it from a single-threaded process as `peer exec` does.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.as_slice() {
        [cmd, root, id, rest @ ..] if cmd == "exec" => {
            match runtime::exec(Path::new(root), id, rest, false) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{e}");
                    125
                }
            }
        }
        _ => runtime::helper::main(&args),
    };
    std::process::exit(code);
}
