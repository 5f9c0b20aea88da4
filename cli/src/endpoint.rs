//! Where the CLI reads from. An endpoint is an HTTP base URL, optionally inside a network
//! namespace (`netns=/run/netns/NAME@http://127.0.0.1:15000`: the local demo's nodes and their
//! localhost-only admin ports; needs root), or a path through the API server's proxy
//! (`kube:/api/v1/namespaces/weft-system/services/weft-control:15014/proxy`) in a cluster.
use std::{io::Read, io::Write, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, bail};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://host:port`, from this process, or from inside `netns`.
    Direct { netns: Option<PathBuf>, host: String, port: u16 },
    /// A path prefix on the API server (its service or pod proxy).
    Kube(String),
}

impl FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("kube:") {
            return Ok(Self::Kube(path.trim_end_matches('/').to_owned()));
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
            Self::Kube(path) => write!(f, "the API server's {path}"),
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
    /// GET `path` (e.g. `/config_dump`).
    pub async fn get(&self, client: Option<&kube::Client>, path: &str) -> anyhow::Result<Answer> {
        let answer = match self {
            Self::Direct { netns, host, port } => {
                let (netns, host, port, path) = (netns.clone(), host.clone(), *port, path.to_owned());
                tokio::task::spawn_blocking(move || direct_get(netns.as_deref(), &host, port, &path)).await?
            }
            Self::Kube(prefix) => {
                let client =
                    client.context("no Kubernetes client (give --kubeconfig or run in a cluster)")?;
                let request = http::Request::get(format!("{prefix}{path}")).body(Vec::new())?;
                match client.request_text(request).await {
                    Ok(body) => Ok(Answer { status: 200, body }),
                    Err(kube::Error::Api(status)) => Ok(Answer { status: status.code, body: status.message }),
                    Err(error) => Err(error.into()),
                }
            }
        };
        answer.with_context(|| format!("GET {path} from {self}"))
    }
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
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("not an HTTP response")?;
    let status =
        head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).context("no status code")?;
    Ok(Answer { status, body: body.to_owned() })
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
            "kube:/api/v1/namespaces/weft-system/services/weft-control:15014/proxy/"
                .parse::<Endpoint>()
                .unwrap(),
            Endpoint::Kube("/api/v1/namespaces/weft-system/services/weft-control:15014/proxy".into())
        );
        assert!("https://x:1".parse::<Endpoint>().is_err());
        assert!("http://x".parse::<Endpoint>().is_err());
    }
}
