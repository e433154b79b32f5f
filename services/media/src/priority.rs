//! CPU classes of media work on a shared worker: what publishes first (chunk encodes, fast-tier
//! slices, merges) runs at the normal priority; the high tier's encodes are deferred (nice
//! `DEFERRED`), so a fast encode that arrives beside one takes most of the cores; background
//! work (the extreme tier's HEVC/AV1 encodes and their measurement) runs at the lowest priority
//! and the idle class, and only uses what is left.

use std::thread::JoinHandle;

/// Linux's lowest priority (nice 19): a nice-0 thread gets about 68 times its CPU share.
pub const LOWEST: i32 = 19;

/// The high tier's priority (nice 10): a nice-0 thread weighs 1024 against its 110, so a fast
/// encode beside a high one gets about 90% of a contended core, and the high encode all of an
/// idle one.
pub const DEFERRED: i32 = 10;

/// How much of the CPU a piece of media work takes when other work wants it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuClass {
    /// What viewers wait for first: normal priority.
    Foreground,
    /// Improves what is already live (the high tier): nice `DEFERRED`.
    Deferred,
    /// Only for spare cycles (the extreme tier): nice `LOWEST` and the idle class.
    Background,
}

/// Runs `f` on a new thread in `class` (`Foreground` keeps the normal priority). The threads
/// an encoder starts inherit the class from the thread that opens it, so the whole encode runs
/// in it.
pub fn spawn_in_class<T: Send + 'static>(
    class: CpuClass,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match class {
                CpuClass::Foreground => {}
                CpuClass::Deferred => set_this_thread_nice(DEFERRED),
                CpuClass::Background => lower_this_thread(),
            }
            f()
        })
}

/// Sets the calling thread's nice value (raising it is always allowed).
fn set_this_thread_nice(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // sets that thread's nice value alone.
    let ret = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if ret != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the thread's priority"
        );
    }
}

/// Runs `f` on a new thread at the lowest CPU priority (`CpuClass::Background`).
pub fn spawn_low_priority<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    spawn_in_class(CpuClass::Background, name, f)
}

/// Puts the calling thread at the lowest CPU priority: nice `LOWEST` and the idle scheduling
/// class (a thread may always lower its own priority); where that fails the work runs at the
/// normal priority.
pub fn lower_this_thread() {
    set_this_thread_nice(LOWEST);
    // SCHED_IDLE on top: a nice-19 thread still weighs 15 against a nice-0 thread's 1024, and
    // an SVT-AV1 encode runs dozens of threads, which then took ~10% of one core from the fast
    // tier; an idle-class thread runs only when nothing else wants the core (measured in
    // docs/benchmarks.md). Any thread may move itself to it; its children inherit it.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot move the thread to the idle scheduling class"
        );
    }
}

/// Runs `f` with `CAP_SYS_NICE` out of the calling thread's effective capabilities, and puts
/// it back afterwards.
///
/// SVT-AV1 (at least up to 1.4, as Debian ships it) starts every one of its threads with
/// `SCHED_FIFO` at real-time priority 99 and falls back to a normal thread only when that is
/// refused. Run as root (the usual container), an AV1 encode then preempts everything else on
/// the machine, nice values included: the fast tier's ladder beside one on one core took 20x
/// its time. Without the capability (and with `RLIMIT_RTPRIO` at its default of 0), creating
/// such a thread fails with `EPERM`, SVT-AV1 creates a normal one, and that thread inherits the
/// opener's nice value. Capabilities are per thread, so only this open is affected.
pub(crate) fn without_realtime<T>(f: impl FnOnce() -> T) -> T {
    let lowered = caps::get().filter(|c| c.has_sys_nice());
    if let Some(c) = &lowered {
        caps::set(&c.without_sys_nice());
    }
    let out = f();
    if let Some(c) = &lowered {
        caps::set(c);
    }
    out
}

/// The calling thread's capability sets through the raw `capget`/`capset` system calls (the
/// libc crate has no wrapper; this is all vtx needs of capabilities).
mod caps {
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_NICE: u32 = 23;

    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    #[derive(Clone, Copy)]
    pub(super) struct Caps([Data; 2]);

    impl Caps {
        pub(super) fn has_sys_nice(&self) -> bool {
            self.0[0].effective & (1 << CAP_SYS_NICE) != 0
        }

        pub(super) fn without_sys_nice(&self) -> Caps {
            let mut c = *self;
            c.0[0].effective &= !(1 << CAP_SYS_NICE);
            c
        }
    }

    pub(super) fn get() -> Option<Caps> {
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: version 3 takes a header and two data records, both valid for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut header as *mut Header,
                data.as_mut_ptr(),
            )
        };
        (ret == 0).then_some(Caps(data))
    }

    pub(super) fn set(c: &Caps) {
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        // SAFETY: as in `get`; pid 0 is the calling thread.
        let ret =
            unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, c.0.as_ptr()) };
        if ret != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot change the thread's capabilities"
            );
        }
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
    fn each_cpu_class_runs_at_its_priority_and_its_children_inherit_it() {
        let before = (this_thread_nice(), policy_of(0));
        for (class, expected) in [
            (CpuClass::Foreground, before),
            (CpuClass::Deferred, (DEFERRED, libc::SCHED_OTHER)),
            (CpuClass::Background, (LOWEST, libc::SCHED_IDLE)),
        ] {
            let (own, child) = spawn_in_class(class, "vtx-test-class", || {
                let here = || (this_thread_nice(), policy_of(0));
                let child = std::thread::spawn(here).join().unwrap();
                (here(), child)
            })
            .unwrap()
            .join()
            .unwrap();
            assert_eq!((own, child), (expected, expected), "{class:?}");
        }
        // The caller's own priority is untouched.
        assert_eq!((this_thread_nice(), policy_of(0)), before);
    }

    /// An AV1 encode (SVT-AV1 starts dozens of threads) runs no thread real-time, even as
    /// root, and the background encode's threads all run at the lowest priority, idle class.
    #[test]
    fn svt_av1_threads_are_neither_real_time_nor_above_the_opener() {
        use std::sync::{Arc, Mutex};

        use crate::{RenditionOutput, Tier, TranscodeRequest, VideoCodec, transcode_ladder};

        let dir = tempfile::tempdir().unwrap();
        let rung = vtx_domain::plan_ladder(176, 144).remove(0);
        let mut req = TranscodeRequest::new(
            vtx_testkit::media("carphone_pristine.mp4"),
            vec![RenditionOutput {
                rung,
                codec: VideoCodec::Av1,
                path: dir.path().join("av1.mp4"),
                crf: None,
            }],
            Tier::Extreme,
        );
        req.audio = false;
        // Sampled while the encoder's threads live: the real-time threads, and the nice values
        // of the encode's threads (a new thread inherits its creator's name).
        // (real-time thread ids, (nice, policy) of each encoder thread)
        type Sample = (Vec<i32>, Vec<(i32, i32)>);
        let seen: Arc<Mutex<Option<Sample>>> = Arc::default();
        let sample = seen.clone();
        req.progress = Some(Arc::new(move |frame| {
            if frame == 20 {
                let nices = threads_named(NAME)
                    .into_iter()
                    .map(|t| (nice_of(t), policy_of(t)))
                    .collect();
                *sample.lock().unwrap() = Some((realtime_threads(), nices));
            }
        }));
        spawn_low_priority(NAME, move || transcode_ladder(&req).map(|_| ()))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let (realtime, nices) = seen.lock().unwrap().take().expect("sampled mid-encode");
        assert!(realtime.is_empty(), "real-time threads: {realtime:?}");
        assert!(nices.len() > 1, "the encoder started threads: {nices:?}");
        assert!(
            nices.iter().all(|&n| n == (LOWEST, libc::SCHED_IDLE)),
            "{nices:?}"
        );
    }

    const NAME: &str = "vtx-test-av1";

    /// This process's threads: (thread id, name).
    fn threads() -> Vec<(i32, String)> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
                Some((
                    e.file_name().to_str()?.parse().ok()?,
                    comm.trim_end().into(),
                ))
            })
            .collect()
    }

    fn threads_named(name: &str) -> Vec<i32> {
        threads()
            .into_iter()
            .filter_map(|(t, n)| (n == name).then_some(t))
            .collect()
    }

    /// The threads of this process that run real-time.
    fn realtime_threads() -> Vec<i32> {
        threads()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|&t| matches!(policy_of(t), libc::SCHED_FIFO | libc::SCHED_RR))
            .collect()
    }

    fn policy_of(tid: i32) -> i32 {
        // SAFETY: sched_getscheduler takes no pointers.
        unsafe { libc::sched_getscheduler(tid) }
    }

    fn nice_of(tid: i32) -> i32 {
        // SAFETY: getpriority takes no pointers.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }
}
