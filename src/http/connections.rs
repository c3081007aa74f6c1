//! What one client, or a crowd of stalled ones, may hold of the process: a write that makes no
//! progress for HTTP_WRITE_STALL_TIMEOUT ends its connection (a download whose client stopped
//! reading holds a socket and an open file forever otherwise), the device port holds at most
//! MAX_CONNECTIONS_PER_IP connections per peer address and at most what the open-file limit
//! leaves after a reserve, so the management port always has descriptors to answer with.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// File descriptors kept out of the device port's reach: the management port, the database,
/// blob files of uploads, outgoing connections.
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Descriptors one device connection may use: its socket and a bundle file it streams.
const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Raises the soft open-file limit to the hard one where the system allows; returns the soft
/// limit in force afterwards (`None`: unlimited or unknown).
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    None
}

/// Device connections the open-file limit allows, after the reserve.
pub fn device_connections_for(open_file_limit: Option<u64>) -> Option<usize> {
    open_file_limit.map(|limit| {
        (limit.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION).max(1) as usize
    })
}

/// Counts the device port's open connections, in total and per peer address.
pub struct ConnectionGate {
    per_ip: usize,
    total: Option<usize>,
    /// Peers that are proxies (TRUSTED_PROXIES): many clients share their address.
    exempt: Vec<IpNet>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl ConnectionGate {
    /// `per_ip` 0: no per-address cap; `total` `None`: no total cap.
    pub fn new(per_ip: usize, total: Option<usize>, exempt: Vec<IpNet>) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            per_ip,
            total,
            exempt,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `ip`, or `None` when it must be closed at once.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        if self.total.is_some_and(|max| *total >= max) {
            return None;
        }
        let capped = self.per_ip > 0 && !self.exempt.iter().any(|net| net.contains(&ip));
        let count = per_ip.entry(ip).or_insert(0);
        if capped && *count >= self.per_ip {
            return None;
        }
        *count += 1;
        *total += 1;
        Some(ConnectionPermit {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A stream whose writes fail with `TimedOut` after making no progress for `timeout`.
pub struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, timeout: Duration) -> StallGuard<S> {
        StallGuard {
            inner,
            timeout,
            stalled_since: None,
        }
    }

    /// After a pending write: `Ready(Err)` once the stall has lasted `timeout`.
    fn check_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled_since = None;
            return result;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check_stall(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.check_stall(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check_stall(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_caps_per_address_and_in_total_and_frees_on_drop() {
        let proxy: IpNet = "10.0.0.0/8".parse().unwrap();
        let gate = ConnectionGate::new(2, Some(4), vec![proxy]);
        let (a, b): (IpAddr, IpAddr) = (
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        );
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per address");
        let _other = gate.admit(b).unwrap();
        drop(first);
        let _again = gate.admit(a).unwrap();
        let proxied: IpAddr = "10.1.1.1".parse().unwrap();
        let _p = gate.admit(proxied).unwrap();
        assert!(gate.admit(proxied).is_none(), "the total still holds");
    }

    #[test]
    fn device_connections_leave_the_reserve() {
        assert_eq!(device_connections_for(Some(256)), Some(96));
        assert_eq!(device_connections_for(Some(10)), Some(1));
        assert_eq!(device_connections_for(None), None);
    }

    #[tokio::test]
    async fn a_write_that_never_progresses_times_out() {
        use tokio::io::AsyncWriteExt;
        // A pipe nobody reads: writes fill its buffer, then stay pending.
        let (client, _unread) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(client, Duration::from_millis(50));
        let chunk = vec![0u8; 4096];
        let error = loop {
            if let Err(e) = guarded.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
