//! The C ABI between the hub and a plugin `cdylib`.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`], an `extern "C" fn() -> *const
//! PluginVTable`. The vtable's first field is [`PluginVTable::abi_version`]; the hub reads
//! it before touching anything else and refuses a library whose version is not
//! [`ABI_VERSION`], then compares [`PluginVTable::schema_hash`] with its own
//! [`SCHEMA_HASH`] (a fingerprint of the SDK types, since postcard carries no schema).
//! The vtable only ever grows by appending fields, and every change to it or to
//! [`HubAllocator`] bumps [`ABI_VERSION`]; this file is in [`SCHEMA_HASH`] as well, so a
//! change that forgets the bump is still refused.
//!
//! Only `#[repr(C)]` data, byte slices and `extern "C"` function pointers cross the
//! boundary. Structured values are postcard-encoded SDK types (config is JSON text).
//! Memory is freed by the side that allocated it: buffers the plugin returns are given
//! back through [`PluginVTable::free_buf`], unless the plugin took the hub's allocator
//! ([`PluginVTable::use_allocator`] answered 1), in which case every allocation of the
//! plugin's Rust code (its global allocator; C code it links calls `malloc` as ever) is
//! the hub's and the hub keeps returned buffers as they are.
//!
//! Every function returns a status: [`STATUS_OK`] (the out-buffer holds the result),
//! [`STATUS_ERROR`] (it holds a UTF-8 error text) or [`STATUS_PANIC`] (the plugin code
//! panicked; the buffer holds the panic message and the session must be closed).

use std::ffi::c_void;

/// Version of this ABI (the vtable layout). The hub refuses plugins built against another
/// one.
pub const ABI_VERSION: u32 = 3;

/// FNV-1a over a string, usable in constants.
const fn fnv1a(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// A fingerprint of every type that crosses the boundary postcard-encoded (the source of
/// the modules that define them). Postcard carries no schema, so a hub and a plugin built
/// from different SDK sources must not talk: the hub compares this after the version.
/// Any edit to those files (even a comment) changes it, which errs on the safe side.
pub const SCHEMA_HASH: u64 = fnv1a(concat!(
    include_str!("abi.rs"),
    include_str!("command.rs"),
    include_str!("event.rs"),
    include_str!("ids.rs"),
    include_str!("io.rs"),
    include_str!("manifest.rs"),
));

/// Postcard-encodes `value` into a buffer of exactly its size. `postcard::to_allocvec`
/// grows its buffer from empty, a dozen reallocations for a delivery; measuring first
/// costs one pass that writes nothing.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}

/// The one symbol a plugin exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"hub_plugin_entry\0";

/// Success: the out-buffer holds the postcard-encoded result.
pub const STATUS_OK: u32 = 0;
/// A refusal: the out-buffer holds a UTF-8 error text.
pub const STATUS_ERROR: u32 = 1;
/// The plugin panicked: the out-buffer holds the panic message.
pub const STATUS_PANIC: u32 = 2;

/// A byte buffer allocated by the plugin and handed to the hub (a `Vec<u8>`'s raw
/// parts). The hub returns it through [`PluginVTable::free_buf`], or, if the plugin
/// accepted the hub's allocator, keeps it as a `Vec<u8>` of its own.
#[repr(C)]
#[derive(Debug)]
pub struct RBuf {
    /// Start of the bytes (dangling but non-null when empty).
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity.
    pub cap: usize,
}

impl RBuf {
    /// An empty buffer that owns nothing (safe to pass to `free_buf`).
    pub const fn empty() -> RBuf {
        RBuf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

/// The hub's global allocator, offered to a plugin through
/// [`PluginVTable::use_allocator`]: the four calls of Rust's `GlobalAlloc`, with the
/// layout as size and alignment. Static in the hub, so it outlives every plugin.
#[repr(C)]
pub struct HubAllocator {
    /// `GlobalAlloc::alloc`.
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// `GlobalAlloc::alloc_zeroed`.
    pub alloc_zeroed: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// `GlobalAlloc::dealloc`.
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    /// `GlobalAlloc::realloc`.
    pub realloc:
        unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8,
}

/// Returns the vtable; the type of the exported [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginVTable;

/// The plugin's function table.
///
/// Pointer arguments follow one rule: `(ptr, len)` pairs are byte slices owned by the
/// caller and valid for the call; `out` points to an [`RBuf`] the callee fills.
#[repr(C)]
pub struct PluginVTable {
    /// Must equal the hub's [`ABI_VERSION`]. Read first, before any other field.
    pub abi_version: u32,
    /// Must equal the hub's [`SCHEMA_HASH`] (checked right after the version).
    pub schema_hash: u64,
    /// Writes the postcard-encoded [`crate::Manifest`] to `out`.
    pub manifest: unsafe extern "C" fn(out: *mut RBuf) -> u32,
    /// Builds a protocol instance from JSON config bytes; on success `*instance` is set.
    pub create: unsafe extern "C" fn(
        config_ptr: *const u8,
        config_len: usize,
        instance: *mut *mut c_void,
        out: *mut RBuf,
    ) -> u32,
    /// Drops an instance made by `create`; every session of it must be closed first.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Opens a session from a postcard-encoded [`crate::SessionInfo`]; on success
    /// `*session` is set. Callable from any thread concurrently.
    pub open: unsafe extern "C" fn(
        instance: *mut c_void,
        info_ptr: *const u8,
        info_len: usize,
        session: *mut *mut c_void,
        out: *mut RBuf,
    ) -> u32,
    /// Feeds a postcard-encoded `(Now, Input)` to a session and writes the postcard-encoded
    /// `Vec<Output>` (drained up to and including the `Output::Timeout`) to `out`.
    pub drive: unsafe extern "C" fn(
        session: *mut c_void,
        input_ptr: *const u8,
        input_len: usize,
        out: *mut RBuf,
    ) -> u32,
    /// Drops a session made by `open`.
    pub close: unsafe extern "C" fn(session: *mut c_void),
    /// Frees a buffer the plugin returned.
    pub free_buf: unsafe extern "C" fn(buf: RBuf),
    /// Offers the hub's allocator; called once per load, right after the version checks
    /// and before any other call. Answers 1 if every allocation of the plugin's global
    /// allocator goes through it from now on (the plugin had allocated nothing yet, or
    /// took this same table at an earlier load of the same mapping), 0 if the plugin
    /// keeps its own allocator (then `free_buf` frees what it returns).
    pub use_allocator: unsafe extern "C" fn(allocator: *const HubAllocator) -> u32,
}
