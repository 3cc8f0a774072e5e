//! batch: wasi:cli command that prints COUNT ticks, its arguments and its environment
//! (what the pod granted it), then exits 0.

fn main() {
    let count: u32 = std::env::var("COUNT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(5);
    for i in 1..=count {
        println!("tick {i}/{count}");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {args:?}");
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env {k}={v}");
    }
}
