//! The export side of the ABI: generic `extern "C"` glue that `export_plugin!` points the
//! vtable at. This module and the hub's loader are the only places with `unsafe`.
//!
//! Every entry runs the plugin's code under `catch_unwind`, so a panic becomes
//! [`STATUS_PANIC`] instead of unwinding into the hub (which would abort the process).

#![allow(unsafe_code)]

use crate::abi::{HubAllocator, PluginVTable, RBuf, STATUS_ERROR, STATUS_OK, STATUS_PANIC};
use crate::io::{Input, Now, Output, SessionInfo};
use crate::plugin::{drive as drive_session, Protocol};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Builds the vtable for protocol `P`, claiming ABI version `abi_version`; the library
/// keeps its own allocator (it declines the hub's).
pub const fn vtable<P: Protocol>(abi_version: u32) -> PluginVTable {
    with_allocator_answer::<P>(abi_version, keep_own_allocator)
}

/// Like [`vtable`], but the library accepts the hub's allocator.
///
/// # Safety
/// The library's `#[global_allocator]` must be [`PluginAllocator`]: the hub keeps the
/// buffers of a library that accepted as blocks of its own allocator. `export_plugin!`
/// is the one caller, and it installs `PluginAllocator` in the same expansion.
pub const unsafe fn vtable_sharing_allocator<P: Protocol>(abi_version: u32) -> PluginVTable {
    with_allocator_answer::<P>(abi_version, use_allocator)
}

const fn with_allocator_answer<P: Protocol>(
    abi_version: u32,
    use_allocator: unsafe extern "C" fn(*const HubAllocator) -> u32,
) -> PluginVTable {
    PluginVTable {
        abi_version,
        schema_hash: crate::abi::SCHEMA_HASH,
        manifest: manifest::<P>,
        create: create::<P>,
        destroy: destroy::<P>,
        open: open::<P>,
        drive: drive::<P>,
        close: close::<P>,
        free_buf,
        use_allocator,
    }
}

fn into_rbuf(bytes: Vec<u8>) -> RBuf {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    RBuf {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Runs `body` under `catch_unwind` and writes its result to `out`.
///
/// # Safety
/// `out` must be valid for a write of one `RBuf`.
unsafe fn guarded(out: *mut RBuf, body: impl FnOnce() -> Result<Vec<u8>, String>) -> u32 {
    let (status, bytes) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(bytes)) => (STATUS_OK, bytes),
        Ok(Err(text)) => (STATUS_ERROR, text.into_bytes()),
        Err(payload) => {
            let text = panic_text(payload.as_ref());
            // A payload whose destructor panics must not unwind into the hub either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            (STATUS_PANIC, text.into_bytes())
        }
    };
    // SAFETY: the caller guarantees `out` is valid for writes.
    unsafe { out.write(into_rbuf(bytes)) };
    status
}

/// # Safety
/// `(ptr, len)` must describe a readable byte slice (or `len == 0`).
unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the caller guarantees the pair describes a live slice for this call.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

unsafe extern "C" fn manifest<P: Protocol>(out: *mut RBuf) -> u32 {
    // SAFETY: the hub passes a valid out pointer (ABI contract).
    unsafe {
        guarded(out, || {
            postcard::to_allocvec(&P::manifest()).map_err(|e| format!("manifest encoding: {e}"))
        })
    }
}

unsafe extern "C" fn create<P: Protocol>(
    config_ptr: *const u8,
    config_len: usize,
    instance: *mut *mut c_void,
    out: *mut RBuf,
) -> u32 {
    // SAFETY: ABI contract: the config slice is live for the call, `instance` and `out`
    // are valid for writes.
    unsafe {
        let config = slice(config_ptr, config_len);
        guarded(out, || {
            let value: serde_json::Value = if config.is_empty() {
                serde_json::Value::Object(Default::default())
            } else {
                serde_json::from_slice(config).map_err(|e| format!("config is not JSON: {e}"))?
            };
            let protocol = P::from_config(&value)?;
            instance.write(Box::into_raw(Box::new(protocol)).cast());
            Ok(Vec::new())
        })
    }
}

unsafe extern "C" fn destroy<P: Protocol>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: `instance` came from `create::<P>` (a `Box<P>`) and is dropped once.
    let protocol = unsafe { Box::from_raw(instance.cast::<P>()) };
    // A panicking destructor must not unwind into the hub.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(protocol)));
}

unsafe extern "C" fn open<P: Protocol>(
    instance: *mut c_void,
    info_ptr: *const u8,
    info_len: usize,
    session: *mut *mut c_void,
    out: *mut RBuf,
) -> u32 {
    // SAFETY: ABI contract: `instance` is a live `P` from `create::<P>` (shared, `P: Sync`),
    // the info slice is live, `session` and `out` are valid for writes.
    unsafe {
        let protocol = &*instance.cast::<P>();
        let info = slice(info_ptr, info_len);
        guarded(out, || {
            let info: SessionInfo =
                postcard::from_bytes(info).map_err(|e| format!("session info decoding: {e}"))?;
            let state = protocol.open(info);
            session.write(Box::into_raw(Box::new(state)).cast());
            Ok(Vec::new())
        })
    }
}

unsafe extern "C" fn drive<P: Protocol>(
    session: *mut c_void,
    input_ptr: *const u8,
    input_len: usize,
    out: *mut RBuf,
) -> u32 {
    // SAFETY: ABI contract: `session` is a live `P::Session` from `open::<P>`, used by one
    // thread at a time; the input slice is live; `out` is valid for writes.
    unsafe {
        let state = &mut *session.cast::<P::Session>();
        let input = slice(input_ptr, input_len);
        guarded(out, || {
            let (now, input): (Now, Input) =
                postcard::from_bytes(input).map_err(|e| format!("input decoding: {e}"))?;
            let outputs: Vec<Output> = drive_session(state, now, input);
            crate::abi::encode(&outputs).map_err(|e| format!("output encoding: {e}"))
        })
    }
}

unsafe extern "C" fn close<P: Protocol>(session: *mut c_void) {
    if session.is_null() {
        return;
    }
    // SAFETY: `session` came from `open::<P>` (a `Box<P::Session>`) and is dropped once.
    let state = unsafe { Box::from_raw(session.cast::<P::Session>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
}

unsafe extern "C" fn free_buf(buf: RBuf) {
    if buf.ptr.is_null() {
        return;
    }
    // SAFETY: every non-null RBuf handed out comes from `into_rbuf`, i.e. a `Vec<u8>`'s
    // raw parts allocated by this library's allocator, and is freed once.
    drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
}

/// Which allocator a library whose global allocator is [`PluginAllocator`] uses. It is
/// decided once and never changes, so everything is freed by the allocator that made it:
/// the hub's, if its table arrives before the library's first allocation (the hub
/// offers it right after loading); the system's, if anything allocated first.
pub struct AllocatorChoice {
    state: AtomicU8,
    hub: AtomicPtr<HubAllocator>,
}

const UNDECIDED: u8 = 0;
const OWN: u8 = 1;
/// `adopt` won and is storing the table.
const ADOPTING: u8 = 2;
const HUB: u8 = 3;

impl AllocatorChoice {
    /// Nothing decided yet.
    pub const fn new() -> AllocatorChoice {
        AllocatorChoice {
            state: AtomicU8::new(UNDECIDED),
            hub: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The hub's table if it was adopted, else `None` (the system allocator), deciding
    /// for the system if nothing was decided yet: an allocation is about to be made.
    pub fn for_allocation(&self) -> Option<&HubAllocator> {
        loop {
            match self.state.load(Ordering::Acquire) {
                // SAFETY: `hub` was set, to a table the hub keeps static, before `state`
                // became HUB (release), and this thread read HUB with acquire.
                HUB => return Some(unsafe { &*self.hub.load(Ordering::Relaxed) }),
                UNDECIDED => {
                    if self
                        .state
                        .compare_exchange(UNDECIDED, OWN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return None;
                    }
                }
                // A table is being stored this very moment: a few instructions.
                ADOPTING => std::hint::spin_loop(),
                _ => return None,
            }
        }
    }

    /// Takes `table` for every allocation from now on if nothing was allocated yet;
    /// the answer is whether every allocation goes to `table` (also when the same table
    /// was taken before: the same library loaded twice shares one mapping). A declined
    /// offer is always safe: the plugin then frees its own buffers.
    pub fn adopt(&self, table: *const HubAllocator) -> bool {
        if table.is_null() {
            return false;
        }
        match self
            .state
            .compare_exchange(UNDECIDED, ADOPTING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.hub.store(table.cast_mut(), Ordering::Relaxed);
                self.state.store(HUB, Ordering::Release);
                true
            }
            Err(_) => {
                // Settles an ADOPTING race to its outcome; HUB then names the table.
                self.for_allocation()
                    .is_some_and(|taken| std::ptr::eq(taken, table))
            }
        }
    }

    /// Whether the hub's allocator was adopted.
    pub fn is_hub(&self) -> bool {
        self.state.load(Ordering::Acquire) == HUB
    }
}

impl Default for AllocatorChoice {
    fn default() -> Self {
        AllocatorChoice::new()
    }
}

/// The library's choice (see [`AllocatorChoice`]).
static CHOICE: AllocatorChoice = AllocatorChoice::new();

/// The global allocator `export_plugin!` installs in a plugin library: the hub's
/// allocator once the hub has offered it, the system's if the library allocated before
/// (as a plugin's own unit tests do). One allocator for the whole process: the plugins'
/// small short-lived allocations get the hub's jemalloc instead of glibc's malloc, and
/// the buffers a plugin returns need no copy.
pub struct PluginAllocator;

// SAFETY: every call goes to the allocator chosen once and for all by `CHOICE`, so a
// block is always freed or resized by the allocator that made it; both allocators
// uphold `GlobalAlloc`'s contract (the hub's table forwards to the hub's own global
// allocator with the same layout).
unsafe impl GlobalAlloc for PluginAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match CHOICE.for_allocation() {
            // SAFETY: the caller's layout contract carries over.
            Some(hub) => unsafe { (hub.alloc)(layout.size(), layout.align()) },
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match CHOICE.for_allocation() {
            // SAFETY: as for `alloc`.
            Some(hub) => unsafe { (hub.alloc_zeroed)(layout.size(), layout.align()) },
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match CHOICE.for_allocation() {
            // SAFETY: `ptr` was allocated by this same choice with `layout`.
            Some(hub) => unsafe { (hub.dealloc)(ptr, layout.size(), layout.align()) },
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match CHOICE.for_allocation() {
            // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid.
            Some(hub) => unsafe { (hub.realloc)(ptr, layout.size(), layout.align(), new_size) },
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

unsafe extern "C" fn use_allocator(table: *const HubAllocator) -> u32 {
    CHOICE.adopt(table) as u32
}

unsafe extern "C" fn keep_own_allocator(_table: *const HubAllocator) -> u32 {
    0
}

/// Exports a [`Protocol`] as this library's plugin entry point.
///
/// Put it once at the root of a `cdylib` crate:
///
/// ```ignore
/// hub_plugin_sdk::export_plugin!(MyProtocol);
/// ```
///
/// It also makes [`PluginAllocator`] the library's global allocator, so the plugin uses
/// the hub's. A plugin with a `#[global_allocator]` of its own writes
/// `export_plugin!(MyProtocol, own_allocator)` instead.
#[macro_export]
macro_rules! export_plugin {
    ($protocol:ty) => {
        // The only expansion that accepts the hub's allocator is this one, which also
        // installs `PluginAllocator`: a library on another allocator must decline it.
        #[global_allocator]
        static HUB_PLUGIN_ALLOCATOR: $crate::export::PluginAllocator =
            $crate::export::PluginAllocator;

        /// The plugin entry point the hub looks up.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn hub_plugin_entry() -> *const $crate::abi::PluginVTable {
            // SAFETY: `PluginAllocator` is this library's global allocator (above).
            static VTABLE: $crate::abi::PluginVTable = unsafe {
                $crate::export::vtable_sharing_allocator::<$protocol>($crate::abi::ABI_VERSION)
            };
            &VTABLE
        }
    };
    ($protocol:ty, own_allocator) => {
        $crate::__export_plugin_with_abi!($protocol, $crate::abi::ABI_VERSION);
    };
}

/// Like `export_plugin!(P, own_allocator)` but claiming an arbitrary ABI version: only
/// for testing the hub's refusal of mismatched plugins.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin_with_abi {
    ($protocol:ty, $abi:expr) => {
        /// The plugin entry point the hub looks up.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn hub_plugin_entry() -> *const $crate::abi::PluginVTable {
            static VTABLE: $crate::abi::PluginVTable = $crate::export::vtable::<$protocol>($abi);
            &VTABLE
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn counted_alloc(size: usize, align: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the test passes a valid layout.
        unsafe { System.alloc(Layout::from_size_align_unchecked(size, align)) }
    }

    unsafe extern "C" fn counted_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(Layout::from_size_align_unchecked(size, align)) }
    }

    unsafe extern "C" fn counted_dealloc(ptr: *mut u8, size: usize, align: usize) {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, Layout::from_size_align_unchecked(size, align)) }
    }

    unsafe extern "C" fn counted_realloc(
        ptr: *mut u8,
        size: usize,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe {
            System.realloc(
                ptr,
                Layout::from_size_align_unchecked(size, align),
                new_size,
            )
        }
    }

    static TABLE: HubAllocator = HubAllocator {
        alloc: counted_alloc,
        alloc_zeroed: counted_alloc_zeroed,
        dealloc: counted_dealloc,
        realloc: counted_realloc,
    };

    #[test]
    fn the_hubs_allocator_is_taken_only_before_the_first_allocation_and_for_good() {
        let fresh = AllocatorChoice::new();
        assert!(!fresh.adopt(std::ptr::null()), "no table, nothing adopted");
        assert!(fresh.adopt(&TABLE));
        assert!(fresh.is_hub());
        let table = fresh.for_allocation().expect("the hub's table");
        let before = CALLS.load(Ordering::Relaxed);
        // SAFETY: a valid layout; the block is freed with it.
        unsafe {
            let block = (table.alloc)(64, 8);
            assert!(!block.is_null());
            let block = (table.realloc)(block, 64, 8, 128);
            (table.dealloc)(block, 128, 8);
        }
        assert_eq!(CALLS.load(Ordering::Relaxed) - before, 3);
        // Offered again (the same library loaded twice): still the hub's; another
        // table is declined and the first one stays.
        assert!(fresh.adopt(&TABLE));
        static OTHER: HubAllocator = HubAllocator {
            alloc: counted_alloc,
            alloc_zeroed: counted_alloc_zeroed,
            dealloc: counted_dealloc,
            realloc: counted_realloc,
        };
        assert!(!fresh.adopt(&OTHER));
        assert!(std::ptr::eq(fresh.for_allocation().unwrap(), &TABLE));

        let allocated_first = AllocatorChoice::new();
        assert!(allocated_first.for_allocation().is_none(), "the system's");
        assert!(
            !allocated_first.adopt(&TABLE),
            "too late: something was allocated"
        );
        assert!(!allocated_first.is_hub());
        assert!(allocated_first.for_allocation().is_none());
    }
}
