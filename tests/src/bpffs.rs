//! Pinned eBPF maps of any layout, made with raw `bpf(2)`: how a test plays an agent of another
//! ABI version, whose datapath pinned its maps in layouts this build no longer defines.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// `BPF_MAP_TYPE_HASH`.
pub const HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const PERCPU_ARRAY: u32 = 6;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;

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

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
