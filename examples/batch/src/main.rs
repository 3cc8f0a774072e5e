//! batch: wasi:cli command that prints COUNT ticks, its arguments and its environment
//! (what the pod granted it), then exits 0. With `CONNECT=host:port` it also opens a TCP
//! connection (wasi:sockets, name looked up through the host) and prints the first line of
//! what an HTTP GET there answers; with `UDP=host:port` it sends one datagram and prints the
//! answer. Failures are printed too, and the run still exits 0, so a pod's log tells what its
//! network grant let through.
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

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
    if let Ok(target) = std::env::var("CONNECT") {
        match http_get(&target) {
            Ok(line) => println!("connect {target}: {line}"),
            Err(e) => println!("connect {target} failed: {e}"),
        }
    }
    if let Ok(target) = std::env::var("UDP") {
        match udp_echo(&target) {
            Ok(answer) => println!("udp {target}: {answer}"),
            Err(e) => println!("udp {target} failed: {e}"),
        }
    }
}

/// The status line an HTTP/1.0 GET of `/` at `target` answers.
fn http_get(target: &str) -> std::io::Result<String> {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    let addrs: Vec<_> = target.to_socket_addrs()?.collect();
    println!("lookup {host}: {addrs:?}");
    let mut stream = TcpStream::connect(&addrs[..])?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// What the UDP server at `target` answers to one datagram.
fn udp_echo(target: &str) -> std::io::Result<String> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(target)?;
    socket.send(b"ping from batch")?;
    // WASI's UDP sockets take no receive timeout: poll without blocking until one passes.
    socket.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}
