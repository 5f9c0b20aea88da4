//! A test nextest gives up on says where it hung: nextest ends a test that ran too long with
//! SIGTERM, and the test process then prints each child's state and kernel stack and every
//! thread's stack (gdb, attached to itself) to its stderr, which nextest shows, before it
//! exits. Without this a hung test leaves only "(test timed out)", and a hang that happens once
//! in a few CI runs cannot be found.
//! Armed only under nextest (`NEXTEST_RUN_ID` set); anywhere else SIGTERM keeps its default.
use std::{
    io::{Read, Write},
    os::fd::FromRawFd,
    sync::Once,
};

/// The write end of the pipe the signal handler wakes the reporting thread through.
static WAKE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Arms the report, once per process.
pub fn report_stacks_on_termination() {
    static ARMED: Once = Once::new();
    if std::env::var_os("NEXTEST_RUN_ID").is_none() {
        return;
    }
    ARMED.call_once(|| {
        if let Err(error) = arm() {
            eprintln!("hang report not armed: {error}");
        }
    });
}

fn arm() -> std::io::Result<()> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    WAKE.store(ends[1], std::sync::atomic::Ordering::SeqCst);
    // SAFETY: ends[0] is a descriptor just made and owned by nothing else.
    let mut woken = unsafe { std::fs::File::from_raw_fd(ends[0]) };
    std::thread::Builder::new().name("hang-report".into()).spawn(move || {
        let mut byte = [0u8; 1];
        if woken.read_exact(&mut byte).is_ok() {
            print_stacks();
            std::process::exit(1);
        }
    })?;
    // gdb is this process's child: where Yama allows tracing only one's descendants, the
    // traced must allow it.
    // SAFETY: prctl(PR_SET_PTRACER) only changes who may trace this process.
    unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY) };
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    // SAFETY: the handler only calls write(2), which is async-signal-safe.
    if unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigterm(_signal: libc::c_int) {
    let fd = WAKE.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: write(2) on the pipe's write end, from a one-byte buffer on this stack.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

/// Written to the process's stderr itself: `eprintln!` in a test's threads goes to libtest's
/// capture, which is lost when the process exits. The children first: nextest signals the whole
/// process group, so they are changing already, and gdb may be slow or stuck itself.
fn print_stacks() {
    let mut stderr = std::io::stderr();
    // A child stuck in the kernel (a wait on it never returns) shows only here.
    let _ = writeln!(stderr, "\n=== terminated: children's state and kernel stack ===");
    for pid in children() {
        let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_default();
        let stat = read("stat");
        // `pid (comm) state …`: the state follows the command's closing parenthesis.
        let state = stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]);
        let command = read("cmdline").replace('\0', " ");
        let _ = writeln!(stderr, "{pid} state {state} wchan {} {command}\n{}", read("wchan"), read("stack"));
    }
    let _ = writeln!(stderr, "=== every thread's stack (gdb) ===");
    // To a file, not a pipe: gdb stops every thread of this process, the reader of a pipe
    // too, and would block once the pipe is full. Within the grace period nextest gives.
    let report = std::env::temp_dir().join(format!("weft-stacks-{}.txt", std::process::id()));
    let gdb = std::fs::File::create(&report).and_then(|file| {
        std::process::Command::new("timeout")
            .args(["45", "gdb", "-p", &std::process::id().to_string(), "-batch", "-nx"])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
    });
    let _ = match gdb.and_then(|_| std::fs::read_to_string(&report)) {
        Ok(stacks) => writeln!(stderr, "{stacks}"),
        Err(error) => writeln!(stderr, "gdb could not run: {error}"),
    };
    let _ = std::fs::remove_file(&report);
}

/// This process's child processes, from every thread's `children` list.
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|pid| pid.parse().ok()).collect::<Vec<u32>>())
        .collect()
}
