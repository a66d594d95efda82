//! `make bench` helper: the copy benchmark's source, a minimal HTTP/1.1 file server on loopback.
//!
//! `bench_serve DIR` serves `GET /NAME` from `DIR` with a `Content-Length`, one thread per
//! connection, keep-alive, and the body sent by `std::io::copy` (sendfile on Linux), so the
//! source costs next to no CPU and every contender reads the same bytes the same way. It prints
//! its port on the first line of stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let dir = dir.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &dir);
        });
    }
    Ok(())
}

fn serve(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
        }
        let mut words = request.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
        let name = target.split('?').next().unwrap_or("").trim_start_matches('/');
        let file = (!name.contains("..") && !name.contains('/'))
            .then(|| std::fs::File::open(dir.join(name)).ok())
            .flatten();
        match (method, file) {
            ("GET" | "HEAD", Some(mut file)) => {
                let len = file.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/gzip\r\n\r\n"
                )?;
                if method == "GET" {
                    std::io::copy(&mut file, &mut out)?;
                }
            }
            _ => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}
