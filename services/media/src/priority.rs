//! Background media work (the extreme tier's HEVC/AV1 encodes and their measurement) runs at
//! the lowest CPU priority, so on a shared worker every fast- or high-tier encode takes the
//! cores whenever it has work and the background encode only uses what is left.

use std::thread::JoinHandle;

/// Linux's lowest priority (nice 19): a nice-0 thread gets about 68 times its CPU share.
pub const LOWEST: i32 = 19;

/// Runs `f` on a new thread at nice `LOWEST`. The threads an encoder starts (x265's pools,
/// SVT-AV1's) inherit the value from the thread that opens it, so the whole encode runs at it.
pub fn spawn_low_priority<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_thread();
            f()
        })
}

/// Sets the calling thread's nice value to `LOWEST` (a thread may always lower its own
/// priority); where that fails the work runs at the normal priority.
pub fn lower_this_thread() {
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // sets that thread's nice value alone.
    let ret = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, LOWEST)
    };
    if ret != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the thread's priority"
        );
    }
}

/// The calling thread's nice value.
#[cfg(test)]
fn this_thread_nice() -> i32 {
    // SAFETY: as above. getpriority may return -1 legitimately; errno is not checked because
    // callers only compare with `LOWEST`.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_and_its_children_run_at_the_lowest_priority() {
        let before = this_thread_nice();
        let (own, child) = spawn_low_priority("vtx-test-low", || {
            let child = std::thread::spawn(this_thread_nice).join().unwrap();
            (this_thread_nice(), child)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!((own, child), (LOWEST, LOWEST));
        // The caller's own priority is untouched.
        assert_eq!(this_thread_nice(), before);
    }
}
