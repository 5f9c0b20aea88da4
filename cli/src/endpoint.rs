//! Where the CLI reads from. An endpoint is an HTTP base URL, optionally inside a network
//! namespace (`netns=/run/netns/NAME@http://127.0.0.1:15000`: the local demo's nodes and their
//! localhost-only admin ports; needs root), or a pod's port reached by port-forward through the
//! API server (`pod:weft-system/weft-control-…:15000`), which is how a cluster's localhost-only
//! admin ports are read, authorized by RBAC on `pods/portforward` as `kubectl port-forward` is.
use std::{io::Read, io::Write, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The same through the API server: a port-forward's set-up, then a big mesh's dump.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a big mesh's `config_dump`).
const MAX_ANSWER: usize = 64 << 20;

/// One HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://host:port`, from this process, or from inside `netns`.
    Direct { netns: Option<PathBuf>, host: String, port: u16 },
    /// `port` on the loopback of pod `namespace/name`, by port-forward.
    Pod { namespace: String, name: String, port: u16 },
}

impl FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some(pod) = text.strip_prefix("pod:") {
            let (pod, port) = pod.rsplit_once(':').context("pod:NAMESPACE/NAME:PORT")?;
            let (namespace, name) = pod.split_once('/').context("pod:NAMESPACE/NAME:PORT")?;
            anyhow::ensure!(!namespace.is_empty() && !name.is_empty(), "pod:NAMESPACE/NAME:PORT");
            return Ok(Self::pod(namespace, name, port.parse().context("port")?));
        }
        let (netns, url) = match text.strip_prefix("netns=") {
            Some(rest) => {
                let (path, url) = rest.split_once('@').context("netns=PATH@http://host:port")?;
                (Some(PathBuf::from(path)), url)
            }
            None => (None, text),
        };
        let authority = url.strip_prefix("http://").context("only http:// endpoints (node-local HTTP)")?;
        let authority = authority.trim_end_matches('/');
        let (host, port) = authority.rsplit_once(':').context("http://host:port")?;
        Ok(Self::Direct {
            netns,
            host: host.trim_matches(['[', ']']).to_owned(),
            port: port.parse().context("port")?,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct { netns: Some(netns), host, port } => {
                write!(f, "http://{host}:{port} in {}", netns.display())
            }
            Self::Direct { netns: None, host, port } => write!(f, "http://{host}:{port}"),
            Self::Pod { namespace, name, port } => write!(f, "pod {namespace}/{name} port {port}"),
        }
    }
}

/// An answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Endpoint {
    /// Port `port` of pod `namespace/name`.
    pub fn pod(namespace: &str, name: &str, port: u16) -> Self {
        Self::Pod { namespace: namespace.to_owned(), name: name.to_owned(), port }
    }

    /// GET `path` (e.g. `/config_dump`).
    pub async fn get(&self, client: Option<&kube::Client>, path: &str) -> anyhow::Result<Answer> {
        let answer = match self {
            Self::Direct { netns, host, port } => {
                let (netns, host, port, path) = (netns.clone(), host.clone(), *port, path.to_owned());
                tokio::task::spawn_blocking(move || direct_get(netns.as_deref(), &host, port, &path)).await?
            }
            Self::Pod { namespace, name, port } => {
                let client =
                    client.context("no Kubernetes client (give --kubeconfig or run in a cluster)")?;
                let pods = kube::Api::<Pod>::namespaced(client.clone(), namespace);
                tokio::time::timeout(FORWARD_TIMEOUT, forwarded_get(&pods, name, *port, path))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {FORWARD_TIMEOUT:?}")))
            }
        };
        answer.with_context(|| format!("GET {path} from {self}"))
    }
}

/// GET `path` from `port` of pod `name` through a port-forward of its own.
async fn forwarded_get(pods: &kube::Api<Pod>, name: &str, port: u16, path: &str) -> anyhow::Result<Answer> {
    let mut forwarder = pods.portforward(name, &[port]).await.context("port-forward")?;
    let mut stream = forwarder.take_stream(port).context("the port-forward has no stream")?;
    let refused = forwarder.take_error(port);
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let answer = read_answer(&mut stream).await;
    drop(stream);
    forwarder.abort();
    match (answer, refused) {
        (Ok(answer), _) => Ok(answer),
        // The kubelet's reason (e.g. nothing listens on that port) says more than a cut stream.
        (Err(error), Some(refused)) => {
            match tokio::time::timeout(Duration::from_millis(500), refused).await {
                Ok(Some(reason)) => bail!("{}", reason.trim()),
                _ => Err(error),
            }
        }
        (Err(error), None) => Err(error),
    }
}

/// Reads one HTTP/1.1 answer: up to its `content-length`, or to the end of the stream.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Answer> {
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(answer) = parse_answer(&received, false)? {
            return Ok(answer);
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return parse_answer(&received, true)?.context("the answer ended early");
        }
        anyhow::ensure!(received.len() + read <= MAX_ANSWER, "answer over {MAX_ANSWER} bytes");
        received.extend_from_slice(&chunk[..read]);
    }
}

/// The answer in `received`, once complete: its head and `content-length` bytes of body, or
/// (without a length) whatever came before the stream `ended`.
fn parse_answer(received: &[u8], ended: bool) -> anyhow::Result<Option<Answer>> {
    let Some(head_end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
        anyhow::ensure!(!ended, "not an HTTP response");
        return Ok(None);
    };
    let head = std::str::from_utf8(&received[..head_end]).context("HTTP head is not UTF-8")?;
    let status =
        head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).context("no status code")?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    let body = &received[head_end + 4..];
    let body = match length {
        Some(length) if body.len() >= length => &body[..length],
        Some(_) if !ended => return Ok(None),
        Some(_) => bail!("the answer ended early"),
        None if !ended => return Ok(None),
        None => body,
    };
    Ok(Some(Answer { status, body: String::from_utf8_lossy(body).into_owned() }))
}

fn direct_get(netns: Option<&std::path::Path>, host: &str, port: u16, path: &str) -> anyhow::Result<Answer> {
    if let Some(netns) = netns {
        // Entered on a fresh thread that ends with the request, never on a shared one.
        let netns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        let (host, path) = (host.to_owned(), path.to_owned());
        return std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd changes only this fresh thread's namespace.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering the network namespace: {}", std::io::Error::last_os_error());
            }
            direct_get(None, &host, port, &path)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?;
    }
    let address = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?.next().context("no address")?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.take(MAX_ANSWER as u64).read_to_end(&mut response)?;
    parse_answer(&response, true)?.context("not an HTTP response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_refuses_others() {
        assert_eq!(
            "http://127.0.0.1:15014".parse::<Endpoint>().unwrap(),
            Endpoint::Direct { netns: None, host: "127.0.0.1".into(), port: 15014 }
        );
        assert_eq!(
            "netns=/run/netns/n0@http://[::1]:15000/".parse::<Endpoint>().unwrap(),
            Endpoint::Direct { netns: Some("/run/netns/n0".into()), host: "::1".into(), port: 15000 }
        );
        assert_eq!(
            "pod:weft-system/weft-control-7d9:15000".parse::<Endpoint>().unwrap(),
            Endpoint::pod("weft-system", "weft-control-7d9", 15000)
        );
        assert!("pod:weft-control:15000".parse::<Endpoint>().is_err());
        assert!("pod:weft-system/x".parse::<Endpoint>().is_err());
        assert!("https://x:1".parse::<Endpoint>().is_err());
        assert!("http://x".parse::<Endpoint>().is_err());
    }

    #[test]
    fn reads_an_answer_by_its_length_or_to_the_end() {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello, and more";
        assert_eq!(parse_answer(whole, false).unwrap().unwrap().body, "hello");
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false).unwrap().is_none());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true).is_err());
        let unsized_ = parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\nnot found\n", true).unwrap().unwrap();
        assert_eq!((unsized_.status, unsized_.body.as_str()), (404, "not found\n"));
        assert!(parse_answer(b"garbage", true).is_err());
    }
}
