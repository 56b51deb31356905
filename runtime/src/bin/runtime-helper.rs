//! Stand-alone helper executable for the runtime's integration tests; the peer binary
//! calls `runtime::helper::main` itself.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(runtime::helper::main(&args));
}
