//! Pinned eBPF objects made and held with raw `bpf(2)`: how a test plays an agent of another
//! ABI version, whose datapath pinned maps in layouts and links of programs this build no longer
//! defines, another process still holding the links an agent pinned, and what a pinned netns
//! link is attached to.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `BPF_MAP_TYPE_HASH`.
pub const HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const PERCPU_ARRAY: u32 = 6;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u64 = 18;
const BPF_CGROUP_INET4_CONNECT: u64 = 10;

/// Creates a map of `map_type` with the given key and value sizes and capacity, and pins it at
/// `path` (replacing nothing: the path must be free).
pub fn pin_new_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<()> {
    // map_create: u32 map_type, key_size, value_size, max_entries, map_flags; the rest zero.
    let mut attr = [0u64; 8];
    attr[0] = u64::from(map_type) | (u64::from(key_size) << 32);
    attr[1] = u64::from(value_size) | (u64::from(max_entries) << 32);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 8];
    // obj_pin: u64 pathname, u32 bpf_fd, u32 file_flags.
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::try_from(fd).map_err(io::Error::other)?;
    let pinned = bpf(BPF_OBJ_PIN, &mut attr);
    // SAFETY: the fd came from the kernel above and nothing else closes it; the pin holds the map.
    unsafe { libc::close(i32::try_from(fd).map_err(io::Error::other)?) };
    pinned.map(drop)
}

/// Attaches to `cgroup` a program that refuses every IPv4 `connect` (`EPERM`), as a link pinned
/// at `path`, and returns that link: held, it stays attached however its pin is removed, until
/// something detaches it.
pub fn pin_refusing_connect4(cgroup: &Path, path: &Path) -> io::Result<OwnedFd> {
    // r0 = 0 (refuse); exit.
    let program: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // prog_load: u32 prog_type, u32 insn_cnt, u64 insns, u64 license, ..., at byte 68 u32
    // expected_attach_type.
    attr[0] = BPF_PROG_TYPE_CGROUP_SOCK_ADDR | ((program.len() as u64) << 32);
    attr[1] = program.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] = BPF_CGROUP_INET4_CONNECT << 32;
    let prog = owned(bpf(BPF_PROG_LOAD, &mut attr)?)?;
    let cgroup = File::open(cgroup)?;
    let mut attr = [0u64; 16];
    // link_create: u32 prog_fd, u32 target_fd, u32 attach_type.
    attr[0] = fd_u64(&prog) | (fd_u64(&cgroup) << 32);
    attr[1] = BPF_CGROUP_INET4_CONNECT;
    let link = owned(bpf(BPF_LINK_CREATE, &mut attr)?)?;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = fd_u64(&link);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(link)
}

/// Opens every object pinned in `dir` and keeps it open, as a process that had them open
/// would (a tool listing links, an agent still shutting down).
pub fn hold_pinned(dir: &Path) -> io::Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let c_path = CString::new(entry?.path().as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut attr = [0u64; 16];
        attr[0] = c_path.as_ptr() as u64;
        held.push(owned(bpf(BPF_OBJ_GET, &mut attr)?)?);
    }
    Ok(held)
}

/// The inode of the network namespace the netns link (`sk_lookup`) pinned at `path` is attached
/// to; 0 once the kernel detached it because that namespace was destroyed (which it does
/// asynchronously, after the last reference to the namespace is gone).
pub fn link_netns_ino(path: &Path) -> io::Result<u32> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    let link = owned(bpf(BPF_OBJ_GET, &mut attr)?)?;
    // `struct bpf_link_info`: u32 type, id, prog_id, then (8-aligned) the union whose netns
    // member starts with u32 netns_ino.
    let mut info = [0u32; 6];
    let mut attr = [0u64; 16];
    // info: u32 bpf_fd, u32 info_len, u64 info pointer.
    attr[0] = fd_u64(&link) | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[4])
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u64(fd: &impl std::os::fd::AsRawFd) -> u64 {
    u64::try_from(fd.as_raw_fd()).expect("invariant: an open fd is non-negative")
}

fn bpf<const N: usize>(cmd: libc::c_long, attr: &mut [u64; N]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
