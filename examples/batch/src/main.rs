//! batch: wasi:cli command that prints COUNT ticks and its arguments, then exits 0.

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
}
