//! Advice to the kernel about the memory weights live in (Linux; elsewhere nothing is done).
//!
//! Weights are streamed from memory once per decoded token, so how they are mapped is part of
//! the kernels' speed: over 4 KiB pages the hardware walks a page table entry for every 4 KiB
//! read, over 2 MiB pages for every 2 MiB (a span product over 256 MB on two threads read
//! 38–40 GB/s on 4 KiB pages and 43–44 GB/s on transparent huge pages, this project's 2-core
//! Zen 3 machine).

/// Asks for transparent huge pages under `values`, before they are first written (the system's
/// `madvise` setting grants them only where asked). Below 2 MiB nothing is asked.
pub(crate) fn huge_pages<T>(values: &mut [T]) {
    #[cfg(target_os = "linux")]
    if let Some((start, len)) = whole_pages(values.as_ptr().cast(), std::mem::size_of_val(values), HUGE) {
        // SAFETY: the range lies inside memory this slice owns; the advice changes how it is
        // backed, never its contents.
        unsafe { libc::madvise(start.cast_mut().cast(), len, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = values;
}

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

/// A transparent huge page on x86_64 and most aarch64 kernels.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// `THPeligible` of the mapping that holds `at`, from /proc/self/smaps.
    fn huge_eligible(at: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            {
                inside = (start..end).contains(&at);
            } else if inside && let Some(flag) = line.strip_prefix("THPeligible:") {
                return flag.trim() == "1";
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    #[test]
    fn values_asked_for_huge_pages_are_eligible_for_them() {
        // Only where the system grants huge pages on request does the advice decide.
        let setting =
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !setting.contains("[madvise]") {
            eprintln!(
                "transparent huge pages are not granted on request here ({}): nothing to check",
                setting.trim()
            );
            return;
        }
        let (mut plain, mut advised) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
        super::huge_pages(&mut advised);
        let middle = |v: &[u8]| v.as_ptr() as usize + v.len() / 2;
        assert!(!huge_eligible(middle(&plain)), "memory not asked for is not eligible");
        assert!(huge_eligible(middle(&advised)), "memory asked for is eligible");
        plain[0] = 1;
        advised[0] = 1;
    }
}
