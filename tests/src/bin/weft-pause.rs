//! The sandbox process of the harness's real pods (containerd's `sandbox_image`), as Kubernetes'
//! own pause: holds the pod's namespaces, reaps children, and exits on SIGTERM or SIGINT (as PID
//! 1 of its PID namespace it would otherwise ignore them).
fn main() {
    // SAFETY: plain signal-mask and sigwait calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut signal = 0;
            if libc::sigwait(&set, &mut signal) != 0 {
                continue;
            }
            if signal == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            } else {
                std::process::exit(0);
            }
        }
    }
}
