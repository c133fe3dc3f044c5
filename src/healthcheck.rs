//! `helios healthcheck`: `GET /ping` on the agent's own API (the container image's HEALTHCHECK,
//! spec/helios-api-v3.md §2.3), with std only so a `FROM scratch` image needs no curl or shell.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::api::ListenAddr;

/// Connect, write and read deadline of the probe.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the agent is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no API address is configured")]
    NoAddress,
    #[error("GET /ping on {address}")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET /ping on {address} answered {status_line:?}")]
    Status {
        address: String,
        status_line: String,
    },
}

/// Probes the first unix socket of `listen` (the container's `/tmp/run/helios.sock`), else the
/// first TCP address; `Ok` when `/ping` answers 200.
pub fn probe(listen: &[ListenAddr]) -> Result<(), HealthError> {
    let addr = listen
        .iter()
        .find(|a| matches!(a, ListenAddr::Unix(_)))
        .or_else(|| listen.first())
        .ok_or(HealthError::NoAddress)?;
    let address = addr.to_string();
    let io = |source| HealthError::Io {
        address: address.clone(),
        source,
    };
    let head = match addr {
        ListenAddr::Unix(path) => {
            let mut s = UnixStream::connect(path).map_err(io)?;
            s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
            exchange(&mut s).map_err(io)?
        }
        ListenAddr::Tcp(a) => {
            let mut s = TcpStream::connect_timeout(a, TIMEOUT).map_err(io)?;
            s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
            exchange(&mut s).map_err(io)?
        }
    };
    let status_line = head.lines().next().unwrap_or_default().to_string();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(HealthError::Status {
            address,
            status_line,
        }),
    }
}

/// Sends the request and returns the start of the answer (bounded: the status line is enough).
fn exchange(s: &mut (impl Read + Write)) -> std::io::Result<String> {
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < buf.len() {
        match s.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}
