//! The wire monitor: an `AF_PACKET` socket in the fabric namespace that sees every frame crossing
//! between nodes and counts those carrying a canary string. Apps under test put the canary in
//! every payload, so a non-zero count proves plaintext crossed the fabric, and zero (with traffic
//! flowing) that it did not. It also counts TCP SYNs by destination port, to tell whether a
//! connection was even attempted across the fabric. There is no tcpdump here; this is its
//! narrow stand-in.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

use crate::netns::NetNs;

/// Large enough for a GSO super-frame from a veth.
const FRAME_BUFFER: usize = 256 * 1024;

/// Counts canary-carrying frames until dropped.
#[derive(Debug)]
pub struct WireMonitor {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Counts {
    frames: AtomicU64,
    canary: AtomicU64,
    /// Receive timeouts: moments when the socket's queue was empty.
    idle: AtomicU64,
    /// Connection-opening SYNs (SYN without ACK) by TCP destination port.
    syns: Mutex<HashMap<u16, u64>>,
}

impl WireMonitor {
    /// Starts counting frames in `netns` that contain `canary`. Frames are counted as they arrive
    /// on a port (not again as they leave another), so each crossing counts once per hop.
    pub fn start(netns: &NetNs, canary: &str) -> anyhow::Result<Self> {
        let canary = canary.as_bytes().to_vec();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let socket = netns.run(open_packet_socket)?.context("opening an AF_PACKET socket")?;
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || capture(socket, &canary, &counts, &stop))
        };
        Ok(Self { counts, stop, thread: Some(thread) })
    }

    /// Frames seen so far that carried the canary.
    pub fn canary_frames(&self) -> u64 {
        self.counts.canary.load(Ordering::Relaxed)
    }

    /// Connection-opening SYNs seen so far to TCP port `port`, IPv4 and IPv6.
    pub fn syns_to(&self, port: u16) -> u64 {
        self.counts.syns.lock().map(|syns| syns.get(&port).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// All frames seen so far (to tell "no canary" from "no traffic").
    pub fn frames(&self) -> u64 {
        self.counts.frames.load(Ordering::Relaxed)
    }

    /// Returns once every frame that reached the fabric before this call has been counted: it
    /// waits for a receive that started after the call to find the queue empty (two idle marks
    /// from now; the first may predate the call). Bounded by `timeout`.
    pub fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = self.counts.idle.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + timeout;
        while self.counts.idle.load(Ordering::Acquire) < start + 2 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "wire monitor never went idle within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for WireMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_packet_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket syscall; the fd is owned below.
    let fd =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(protocol)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // A receive timeout so the loop notices `stop` promptly.
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    set_option(&fd, libc::SO_RCVTIMEO, &timeout)?;
    Ok(fd)
}

fn set_option<T>(fd: &std::os::fd::OwnedFd, option: libc::c_int, value: &T) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(size_of::<T>()).expect("invariant: option fits socklen_t");
    // SAFETY: value points to a live T of the given length.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, (value as *const T).cast(), len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn capture(socket: std::os::fd::OwnedFd, canary: &[u8], counts: &Counts, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let mut frame = vec![0u8; FRAME_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len =
            libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("invariant: fits");
        // SAFETY: buffer and address point to live memory of the lengths passed.
        let got = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                0,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        let Ok(len) = usize::try_from(got) else {
            // Timeout (or EINTR): the queue was empty; check `stop`.
            counts.idle.fetch_add(1, Ordering::Release);
            continue;
        };
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        counts.frames.fetch_add(1, Ordering::Relaxed);
        let frame = &frame[..len];
        if frame.windows(canary.len()).any(|window| window == canary) {
            counts.canary.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(port) = opening_syn_port(frame)
            && let Ok(mut syns) = counts.syns.lock()
        {
            *syns.entry(port).or_default() += 1;
        }
    }
}

/// The destination port of a TCP SYN (without ACK) in an Ethernet frame carrying IPv4 or IPv6
/// (no extension headers: none are used here).
fn opening_syn_port(frame: &[u8]) -> Option<u16> {
    const ETHERNET: usize = 14;
    const TCP: u8 = 6;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let tcp = match ethertype {
        0x0800 if *frame.get(ETHERNET + 9)? == TCP => ETHERNET + usize::from(frame.get(ETHERNET)? & 0x0f) * 4,
        0x86dd if *frame.get(ETHERNET + 6)? == TCP => ETHERNET + 40,
        _ => return None,
    };
    let flags = *frame.get(tcp + 13)?;
    let (syn, ack) = (flags & 0x02 != 0, flags & 0x10 != 0);
    (syn && !ack).then(|| u16::from_be_bytes([frame[tcp + 2], frame[tcp + 3]]))
}
