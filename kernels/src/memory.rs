//! Giving back a mapped file's pages once its weights are copied (Linux; elsewhere nothing is
//! done), so that a model's weights are held once while it loads, not twice.
//!
//! Not done: asking for transparent huge pages under the copies. On this project's 2-core Zen 3
//! machine a span product over 256 MB read 38–40 GB/s on 4 KiB pages and 43–44 GB/s on huge
//! pages, but end to end (a 0.5 B model's F16 and F32 decode, `xtask bench engine-child`,
//! interleaved) the huge pages gained nothing measurable and made an F16 file load 2–3× as slowly
//! (the kernel zeroes, and may compact, each 2 MiB page as it is first written).

/// Gives back the pages that lie wholly inside `bytes`, which have been copied and will not be
/// read again through this mapping.
///
/// # Safety
///
/// `bytes` must lie in a read-only mapping of a file: a page given back there is read again from
/// the file if it is touched, so nothing reading it can see a change. (In anonymous or heap
/// memory the pages would read as zeros afterwards.)
pub(crate) unsafe fn give_back(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    if let Some((start, len)) = whole_pages(bytes.as_ptr(), bytes.len(), page_size()) {
        // SAFETY: the caller's promise: a file's read-only mapping, whose pages read the same
        // after they are dropped.
        unsafe { libc::madvise(start.cast_mut().cast(), len, libc::MADV_DONTNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The part of `[ptr, ptr + len)` made of whole units of `unit` bytes (a power of two), if any.
#[cfg(target_os = "linux")]
fn whole_pages(ptr: *const u8, len: usize, unit: usize) -> Option<(*const u8, usize)> {
    let start = (ptr as usize).next_multiple_of(unit);
    let end = (ptr as usize + len) / unit * unit;
    (end > start).then(|| (ptr.wrapping_add(start - ptr as usize), end - start))
}
