//! Plain HTTP/1.1 for the waypoint's tests: `http-echo` answers every request with who answered
//! and what it saw; `http-get` sends requests over one kept-alive connection and tallies the
//! answers; `http-raw` sends bytes as written, for requests no client library would send.
//! Hand-written on purpose: a test app with nothing between it and the wire.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Serves on every address of the pod; each response's body is `name=<name> method=<method>
/// path=<path>` and then a `header <name>=<value>` line per request header; a path under
/// `/slow` is answered after 3 s; `/status/<code>` is answered with that status;
/// `/fail-first/<n>/<anything>` with 503 the first `n` times this server sees that path, then
/// 200; `/bytes/<n>` with a body of `n` bytes (and nothing printed: a benchmark's);
/// `/connection` with `name=<name> connection=<n>`, the `n`th connection this server accepted
/// (so that a test can tell whether requests shared one). Prints
/// `ready`, then `served <method> <path>` for each request.
pub fn echo(port: u16, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
    println!("ready");
    std::io::stdout().flush()?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    for (accepted, stream) in listener.incoming().enumerate() {
        let Ok(stream) = stream else { continue };
        let (name, seen) = (name.to_owned(), seen.clone());
        std::thread::spawn(move || {
            let _ = serve(stream, accepted + 1, &name, &seen);
        });
    }
    Ok(())
}

/// How many times this server saw each path.
type Seen = std::sync::Mutex<BTreeMap<String, usize>>;

/// The status `target` asks for (see [`echo`]).
fn status_for(target: &str, seen: &Seen) -> u16 {
    if let Some(code) = target.strip_prefix("/status/") {
        return code.parse().unwrap_or(400);
    }
    let Some(rest) = target.strip_prefix("/fail-first/") else { return 200 };
    let failures: usize = rest.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = seen.entry(target.to_owned()).or_insert(0);
    *count += 1;
    if *count <= failures { 503 } else { 200 }
}

/// One request head: method, target, headers (names lowercased).
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

fn read_head(reader: &mut impl BufRead) -> anyhow::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { bail!("request line {line:?}") };
    let (method, target) = (method.to_owned(), target.to_owned());
    Ok(Some(Head { method, target, headers: read_headers(reader)? }))
}

/// Header lines up to the blank line, names lowercased.
fn read_headers(reader: &mut impl BufRead) -> anyhow::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line.split_once(':').context("header without a colon")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

fn content_length(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Serves connection number `connection`'s requests.
fn serve(stream: TcpStream, connection: usize, name: &str, seen: &Seen) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let mut body = vec![0; content_length(&head.headers)];
        reader.read_exact(&mut body)?;
        if let Some(size) = head.target.strip_prefix("/bytes/").and_then(|size| size.parse().ok()) {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            writer.write_all(&[head.into_bytes(), vec![b'y'; size]].concat())?;
            continue;
        }
        // For tests that must know what reached the app (and what never did).
        println!("served {} {}", head.method, head.target);
        // A slow answer, for tests of what happens while a request is in flight.
        if head.target.starts_with("/slow") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let mut answer = match head.target.as_str() {
            "/connection" => format!("name={name} connection={connection}\n"),
            _ => format!("name={name} method={} path={}\n", head.method, head.target),
        };
        for (header, value) in &head.headers {
            answer.push_str(&format!("header {header}={value}\n"));
        }
        let close = head.headers.iter().any(|(name, value)| name == "connection" && value == "close");
        let status = status_for(&head.target, seen);
        // One write: head and body in separate segments would wait on Nagle and a delayed ACK.
        let response = format!(
            "HTTP/1.1 {status} -\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: {name}\r\n\r\n{answer}",
            answer.len()
        );
        writer.write_all(response.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

/// `count` GETs of `path` at `to` over one connection (a new one when the server closes it),
/// with `headers` (`name:value`). Prints each distinct answer's count as
/// `<count> status=<status> <first body line>`, then the first whole response body as
/// `body:` lines, then `took_us=<µs>` from the first request sent to the last answer read (a
/// rate measured without the process's start and end). Exits 1 if the connection fails.
pub fn get(to: SocketAddr, path: &str, headers: &[String], count: usize) -> anyhow::Result<()> {
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut started = None;
    let mut first_body = None;
    let mut connection: Option<(TcpStream, BufReader<TcpStream>)> = None;
    for _ in 0..count {
        let (writer, reader) = match &mut connection {
            Some(open) => open,
            None => {
                let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {to}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(15)))?;
                stream.set_nodelay(true)?;
                let reader = BufReader::new(stream.try_clone()?);
                connection.insert((stream, reader))
            }
        };
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {to}\r\n");
        for header in headers {
            request.push_str(&format!("{header}\r\n"));
        }
        request.push_str("\r\n");
        started.get_or_insert_with(std::time::Instant::now);
        writer.write_all(request.as_bytes())?;
        let (status, response_headers, body) = read_response(reader)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        *tally.entry(format!("status={status} {}", body.lines().next().unwrap_or(""))).or_default() += 1;
        if first_body.is_none() {
            let mut shown = body.clone();
            for (name, value) in &response_headers {
                shown.push_str(&format!("response-header {name}={value}\n"));
            }
            first_body = Some(shown);
        }
        if response_headers.iter().any(|(name, value)| name == "connection" && value == "close") {
            connection = None;
        }
    }
    for (answer, count) in tally {
        println!("{count} {answer}");
    }
    for line in first_body.unwrap_or_default().lines() {
        println!("body: {line}");
    }
    println!("took_us={}", started.map_or(0, |started| started.elapsed().as_micros()));
    Ok(())
}

/// One keep-alive HTTP/1.1 connection to `to`, held open until stdin ends: prints
/// `connected peer=<address>`, then GETs each path read from stdin on it and prints
/// `status=<status> <first body line>`. Exits 1 if the connection fails or closes.
pub fn session(to: SocketAddr) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    println!("connected peer={}", stream.peer_addr()?);
    let (mut writer, mut reader) = (stream.try_clone()?, BufReader::new(stream));
    for path in std::io::stdin().lines() {
        writer.write_all(format!("GET {} HTTP/1.1\r\nhost: {to}\r\n\r\n", path?).as_bytes())?;
        let (status, _, body) = read_response(&mut reader)?;
        let body = String::from_utf8_lossy(&body);
        println!("status={status} {}", body.lines().next().unwrap_or(""));
    }
    Ok(())
}

/// Header names (lowercased) and values, in order.
type Headers = Vec<(String, String)>;

/// One response: its status, headers and body (by its `content-length`).
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<(String, Headers, Vec<u8>)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        bail!("the connection closed before an answer");
    }
    let status = status_line.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let headers = read_headers(reader)?;
    let mut body = vec![0; content_length(&headers)];
    reader.read_exact(&mut body)?;
    Ok((status, headers, body))
}

/// POSTs of `load`'s size to `path` at `to` at its rate for its seconds, pipelined on one
/// kept-alive connection: each leaves when it is due, whatever came back (open loop), and is
/// timed from then to its answer. Prints `requests=N` and the percentiles; fails on any answer
/// but 200.
pub fn openloop(to: SocketAddr, path: &str, headers: &[String], load: &crate::Load) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let size = load.size;
    let extra: String = headers.iter().map(|header| format!("{header}\r\n")).collect();
    let request = [
        format!("POST {path} HTTP/1.1\r\nhost: {to}\r\n{extra}content-length: {size}\r\n\r\n").into_bytes(),
        vec![b'x'; size],
    ]
    .concat();
    let schedule = crate::Schedule::new(load);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = stream;
        schedule.pace(|_| stream.write_all(&request))
    });
    let mut samples = Vec::with_capacity(schedule.count as usize);
    for n in 0..schedule.count {
        let (status, _, _) = read_response(&mut reader).with_context(|| format!("answer {n}"))?;
        anyhow::ensure!(status == "200", "answer {n}: status {status}");
        samples.push(Instant::now().saturating_duration_since(schedule.due(n)));
    }
    writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    println!("requests={} {}", schedule.count, crate::percentiles(samples)?);
    Ok(())
}

/// Sends `request` (with `\r` and `\n` written as escapes) to `to`, half-closes, and prints
/// whatever comes back until the server closes.
pub fn raw(to: SocketAddr, request: &str) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(request.replace("\\r", "\r").replace("\\n", "\n").as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    print!("{}", String::from_utf8_lossy(&answer));
    Ok(())
}
