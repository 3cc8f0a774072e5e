//! crash: wasi:cli command that reports a crash on stderr and exits with code 3.

fn main() {
    eprintln!("crashing");
    std::process::exit(3);
}
