//! A TCP relay in front of the local registry that can break pulls halfway: while cutting, every
//! connection's upstream→client stream is closed after N bytes (manifests get through, a layer
//! blob does not), which the engine sees as a registry dropping the connection mid-download.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct TcpRelay {
    /// Where the relay listens (`127.0.0.1:<port>`, a registry address the engine trusts).
    pub addr: SocketAddr,
    /// Bytes after which a response stream is cut; 0: pass everything.
    limit: Arc<AtomicU64>,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TcpRelay {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    pub fn start(upstream: &str) -> TcpRelay {
        let upstream: SocketAddr = upstream.parse().expect("upstream is IP:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay binds");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, c, s) = (limit.clone(), cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let limit = l.load(Ordering::SeqCst);
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || copy(c2, s2, 0, None));
                        let cuts = c.clone();
                        std::thread::spawn(move || copy(server, client, limit, Some(cuts)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpRelay {
            addr,
            limit,
            cuts,
            stop,
        }
    }

    /// From now on, new connections are cut after `bytes` bytes of response.
    pub fn cut_after(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::SeqCst);
    }

    /// From now on, new connections pass everything.
    pub fn pass(&self) {
        self.limit.store(0, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`; with a `limit`, closes both after that many bytes (counting a cut).
fn copy(mut from: TcpStream, mut to: TcpStream, limit: u64, cuts: Option<Arc<AtomicUsize>>) {
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if limit > 0 && sent + n as u64 > limit {
            let _ = to.write_all(&buf[..(limit - sent) as usize]);
            if let Some(c) = &cuts {
                c.fetch_add(1, Ordering::SeqCst);
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
}
