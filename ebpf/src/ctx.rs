//! Word-at-a-time access to IPv6 address fields of kernel contexts and socket pointers: the
//! verifier accepts those accesses only at constant offsets from the pointer it handed out,
//! never through a pointer derived from it, which is what a whole-array copy compiles to.

/// Reads an IPv6 address field one word at a time.
#[inline(always)]
pub unsafe fn read_ip6(field: *const [u32; 4]) -> [u32; 4] {
    let words = field.cast::<u32>();
    // SAFETY: four words inside the context field; the verifier checks each access.
    unsafe {
        [
            words.read_volatile(),
            words.add(1).read_volatile(),
            words.add(2).read_volatile(),
            words.add(3).read_volatile(),
        ]
    }
}

/// Writes an IPv6 context field one word at a time (see [`read_ip6`]).
#[inline(always)]
pub unsafe fn write_ip6(field: *mut [u32; 4], ip: &[u32; 4]) {
    let words = field.cast::<u32>();
    // SAFETY: as in `read_ip6`.
    unsafe {
        words.write_volatile(ip[0]);
        words.add(1).write_volatile(ip[1]);
        words.add(2).write_volatile(ip[2]);
        words.add(3).write_volatile(ip[3]);
    }
}
