//! The `bpf(2)` link commands aya 0.13 does not expose for cgroup programs: creating a link
//! (`BPF_LINK_CREATE`), pinning it (`BPF_OBJ_PIN`), replacing the program a pinned link runs
//! in one step (`BPF_LINK_UPDATE`: an upgraded agent leaves no moment without capture),
//! reading back which program a pinned link runs and which cgroup it is attached to
//! (`BPF_OBJ_GET` + `BPF_OBJ_GET_INFO_BY_FD`), and detaching a pinned link at once
//! (`BPF_LINK_DETACH`).
//! Pinned links are what keep capture attached while no agent runs. Removing a pin file alone
//! does not detach at once: the kernel frees an unpinned link later, from a work queue, and
//! never while another process still holds it open.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// Attach types (`enum bpf_attach_type` of the kernel UAPI) Weft uses.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum AttachType {
    CgroupSockOps = 3,
    CgroupInet4Bind = 8,
    CgroupInet6Bind = 9,
    CgroupInet4Connect = 10,
    CgroupInet6Connect = 11,
    CgroupGetsockopt = 21,
    CgroupInet4Getpeername = 29,
    CgroupInet6Getpeername = 30,
    SkLookup = 36,
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` is larger; the kernel accepts a shorter, zero-filled prefix.
#[repr(C)]
#[derive(Default)]
struct Attr([u64; 8]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Attaches the program `prog` to `target` (a cgroup directory or netns fd) as a bpf link.
pub fn create(prog: impl AsFd, target: impl AsFd, attach_type: AttachType) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    // link_create: u32 prog_fd, u32 target_fd, u32 attach_type, u32 flags.
    attr.0[0] = u64::from(fd_u32(&prog)) | (u64::from(fd_u32(&target)) << 32);
    attr.0[1] = u64::from(attach_type as u32);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("link fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins `link` at `path` on bpffs, so it outlives this process.
pub fn pin(link: impl AsFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr::default();
    // obj_pin: u64 pathname, u32 bpf_fd, u32 file_flags.
    attr.0[0] = path.as_ptr() as u64;
    attr.0[1] = u64::from(fd_u32(&link));
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Makes the link pinned at `path` run `prog` from now on, atomically: the old program runs
/// until the new one does.
pub fn update(path: &Path, prog: impl AsFd) -> io::Result<()> {
    let link = open_pinned(path)?;
    let mut attr = Attr::default();
    // link_update: u32 link_fd, u32 new_prog_fd, u32 flags, u32 old_prog_fd.
    attr.0[0] = u64::from(fd_u32(&link)) | (u64::from(fd_u32(&prog)) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Removes the pin at `path` and detaches its link before returning. The link is held open
/// across both, so a crash between them leaves no pin of a detached link behind: the kernel
/// frees it once the process is gone. A pin already gone is no error.
pub fn detach(path: &Path) -> io::Result<()> {
    let link = match open_pinned(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        opened => opened.map_err(|error| context("opening the pinned link", error))?,
    };
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(context("unpinning", error)),
        _ => {}
    }
    let mut attr = Attr::default();
    // link_detach: u32 link_fd.
    attr.0[0] = u64::from(fd_u32(&link));
    bpf(BPF_LINK_DETACH, &mut attr).map(drop).map_err(|error| context("detaching (BPF_LINK_DETACH)", error))
}

/// `error`, saying which step it came from.
fn context(step: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{step}: {error}"))
}

/// The object pinned at `path`.
fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr::default();
    attr.0[0] = c_path.as_ptr() as u64;
    let fd = i32::try_from(bpf(BPF_OBJ_GET, &mut attr)?).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of the program the link pinned at `path` runs.
pub fn program_id(path: &Path) -> io::Result<u32> {
    Ok(info(path)?.prog_id)
}

/// The id of the cgroup the cgroup link pinned at `path` is attached to: 0 once the kernel
/// detached it, its cgroup being removed.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(info(path)?.target)
}

/// The head of `struct bpf_link_info`.
#[repr(C)]
#[derive(Default)]
struct Info {
    kind: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// The first member of the union that follows, by kind: a cgroup link's `cgroup_id`.
    target: u64,
}

fn info(path: &Path) -> io::Result<Info> {
    let link = open_pinned(path)?;
    let mut info = Info::default();
    let mut attr = Attr::default();
    // info: u32 bpf_fd, u32 info_len, u64 info pointer.
    attr.0[0] = u64::from(fd_u32(&link)) | ((size_of::<Info>() as u64) << 32);
    attr.0[1] = (&raw mut info) as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

fn fd_u32(fd: &impl AsFd) -> u32 {
    u32::try_from(fd.as_fd().as_raw_fd()).expect("invariant: an open fd is non-negative")
}
