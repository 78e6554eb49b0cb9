//! The import side of the plugin ABI: finds `*.so` files, checks their ABI version,
//! creates instances and drives sessions. With `plugins/sdk/src/export.rs`, the only
//! place with `unsafe`; everything above this module is safe Rust.

#![allow(unsafe_code)]

use hub_plugin_sdk::abi::{
    EntryFn, HubAllocator, PluginVTable, RBuf, ABI_VERSION, ENTRY_SYMBOL, SCHEMA_HASH,
    STATUS_ERROR, STATUS_OK, STATUS_PANIC,
};
use hub_plugin_sdk::{Input, Manifest, Now, Output, SessionInfo};
use std::alloc::Layout;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a plugin library was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// dlopen failed.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// The entry symbol is missing: not a hub plugin.
    #[error("{path}: no `hub_plugin_entry` symbol: not a hub plugin")]
    NoEntry {
        /// The file.
        path: PathBuf,
    },
    /// Built against another ABI version.
    #[error("{path}: plugin ABI version {found}, this hub speaks ABI version {expected}; rebuild the plugin against this hub's SDK")]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// The hub's version.
        expected: u32,
    },
    /// Built against another SDK source (the message types differ).
    #[error("{path}: plugin SDK schema {found:016x}, this hub's is {expected:016x}; rebuild the plugin against this hub's SDK")]
    SchemaMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's schema hash.
        found: u64,
        /// The hub's schema hash.
        expected: u64,
    },
    /// The plugin refused or failed a call during loading.
    #[error("{path}: {what}: {detail}")]
    Call {
        /// The file.
        path: PathBuf,
        /// Which call.
        what: &'static str,
        /// The plugin's error text.
        detail: String,
    },
}

/// A fault of a plugin session.
#[derive(Debug, thiserror::Error)]
pub enum SessionFault {
    /// The plugin code panicked; the session is poisoned.
    #[error("plugin panicked: {0}")]
    Panic(String),
    /// The plugin returned an error or undecodable output.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// The session already panicked once.
    #[error("session poisoned by an earlier panic")]
    Poisoned,
}

/// The `*.so` files in `dir`, sorted by name.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "so") && path.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// The hub's global allocator (jemalloc, see `main.rs`) as offered to plugins.
static HUB_ALLOCATOR: HubAllocator = HubAllocator {
    alloc: hub_alloc,
    alloc_zeroed: hub_alloc_zeroed,
    dealloc: hub_dealloc,
    realloc: hub_realloc,
};

// The four calls forward to `std::alloc`, i.e. to the hub's `#[global_allocator]`. The
// plugin calls them from its own `GlobalAlloc`, whose callers guarantee what
// `GlobalAlloc` requires: a valid layout (non-zero size, power-of-two alignment) and
// blocks freed or resized with the layout they were allocated with.

unsafe extern "C" fn hub_alloc(size: usize, align: usize) -> *mut u8 {
    debug_assert!(size > 0 && align.is_power_of_two());
    // SAFETY: a valid, non-zero-sized layout (GlobalAlloc contract, see above).
    unsafe { std::alloc::alloc(Layout::from_size_align_unchecked(size, align)) }
}

unsafe extern "C" fn hub_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    debug_assert!(size > 0 && align.is_power_of_two());
    // SAFETY: as for `hub_alloc`.
    unsafe { std::alloc::alloc_zeroed(Layout::from_size_align_unchecked(size, align)) }
}

unsafe extern "C" fn hub_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: `ptr` came from `hub_alloc`/`hub_realloc` with this layout.
    unsafe { std::alloc::dealloc(ptr, Layout::from_size_align_unchecked(size, align)) }
}

unsafe extern "C" fn hub_realloc(ptr: *mut u8, size: usize, align: usize, new: usize) -> *mut u8 {
    // SAFETY: as for `hub_dealloc`; `new` is a valid size for `align`.
    unsafe { std::alloc::realloc(ptr, Layout::from_size_align_unchecked(size, align), new) }
}

/// A loaded plugin library.
pub struct Library {
    path: PathBuf,
    manifest: Manifest,
    vtable: *const PluginVTable,
    /// The plugin took the hub's allocator: what it returns is the hub's to keep.
    shares_allocator: bool,
    // Kept loaded for as long as any instance or session exists (they hold an Arc).
    _lib: libloading::Library,
}

// SAFETY: the vtable is immutable static data inside the library, and every function in
// it is documented as callable from any thread (instances are `Sync`, sessions are used
// by one thread at a time, which `Session` enforces by `&mut self`).
unsafe impl Send for Library {}
// SAFETY: as above: shared access only reads the static vtable.
unsafe impl Sync for Library {}

/// Takes a buffer the plugin returned: as it is if the plugin allocates with the hub's
/// allocator (`shared`), else a copy, giving the plugin's own buffer back to be freed.
fn take_buf(vtable: &PluginVTable, shared: bool, buf: RBuf) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    if shared {
        // SAFETY: a non-null RBuf is a `Vec<u8>`'s raw parts (`export.rs`), allocated
        // through the hub's allocator since the plugin shares it: this process's global
        // allocator, with the layout a `Vec<u8>` of that capacity frees.
        return unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) };
    }
    let bytes = if buf.len == 0 {
        Vec::new()
    } else {
        // SAFETY: a non-null RBuf from the plugin describes `len` initialised bytes it
        // owns until we pass it to `free_buf`, which we do right after copying.
        unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
    };
    // SAFETY: `buf` came from this plugin and is freed exactly once, here.
    unsafe { (vtable.free_buf)(buf) };
    bytes
}

fn status_result(
    vtable: &PluginVTable,
    shared: bool,
    status: u32,
    buf: RBuf,
) -> Result<Vec<u8>, SessionFault> {
    let bytes = take_buf(vtable, shared, buf);
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    match status {
        STATUS_OK => Ok(bytes),
        STATUS_PANIC => Err(SessionFault::Panic(text())),
        STATUS_ERROR => Err(SessionFault::Plugin(text())),
        other => Err(SessionFault::Plugin(format!("unknown status {other}"))),
    }
}

impl Library {
    /// Loads `path`, checks the ABI version and reads the manifest.
    pub fn load(path: &Path) -> Result<Arc<Library>, LoadError> {
        // SAFETY: loading runs the library's initialisers. Plugins are trusted code the
        // operator put in the plugins directory (as with any dlopen-based plugin system).
        let lib = unsafe { libloading::Library::new(path) }.map_err(|source| LoadError::Open {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: the symbol, if present, has the documented `EntryFn` type.
        let entry: EntryFn = match unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL) } {
            Ok(symbol) => *symbol,
            Err(_) => {
                return Err(LoadError::NoEntry {
                    path: path.to_owned(),
                })
            }
        };
        // SAFETY: calling the entry point has no preconditions.
        let vtable = unsafe { entry() };
        if vtable.is_null() {
            return Err(LoadError::NoEntry {
                path: path.to_owned(),
            });
        }
        // SAFETY: every ABI version starts the vtable with a u32 version; read only that
        // field before trusting the rest of the layout.
        let found = unsafe { std::ptr::addr_of!((*vtable).abi_version).read() };
        if found != ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                path: path.to_owned(),
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: the version matches, so the layout is ours; it is static in the library.
        let table = unsafe { &*vtable };
        if table.schema_hash != SCHEMA_HASH {
            return Err(LoadError::SchemaMismatch {
                path: path.to_owned(),
                found: table.schema_hash,
                expected: SCHEMA_HASH,
            });
        }
        // Before any other call, so that the plugin has allocated nothing yet.
        // SAFETY: the table is static and outlives the library.
        let shares_allocator = unsafe { (table.use_allocator)(&HUB_ALLOCATOR) } == 1;
        let mut out = RBuf::empty();
        // SAFETY: `out` is a valid RBuf to write.
        let status = unsafe { (table.manifest)(&mut out) };
        let call_error = |what, detail: String| LoadError::Call {
            path: path.to_owned(),
            what,
            detail,
        };
        let bytes = status_result(table, shares_allocator, status, out)
            .map_err(|e| call_error("manifest", e.to_string()))?;
        let manifest: Manifest =
            postcard::from_bytes(&bytes).map_err(|e| call_error("manifest", e.to_string()))?;
        Ok(Arc::new(Library {
            path: path.to_owned(),
            manifest,
            vtable,
            shares_allocator,
            _lib: lib,
        }))
    }

    fn table(&self) -> &PluginVTable {
        // SAFETY: checked at load; static data that lives as long as `_lib`.
        unsafe { &*self.vtable }
    }

    /// A call's status and out-buffer as its result.
    fn result(&self, status: u32, out: RBuf) -> Result<Vec<u8>, SessionFault> {
        status_result(self.table(), self.shares_allocator, status, out)
    }

    /// Whether the plugin allocates with the hub's allocator.
    pub fn shares_allocator(&self) -> bool {
        self.shares_allocator
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the plugin instance from its config section.
    pub fn instantiate(
        self: &Arc<Self>,
        config: &serde_json::Value,
    ) -> Result<Arc<Instance>, LoadError> {
        let json = config.to_string();
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut out = RBuf::empty();
        // SAFETY: the config slice is live for the call; `instance` and `out` are valid.
        let status =
            unsafe { (self.table().create)(json.as_ptr(), json.len(), &mut instance, &mut out) };
        self.result(status, out).map_err(|e| LoadError::Call {
            path: self.path.clone(),
            what: "create",
            detail: e.to_string(),
        })?;
        if instance.is_null() {
            return Err(LoadError::Call {
                path: self.path.clone(),
                what: "create",
                detail: "returned no instance".into(),
            });
        }
        Ok(Arc::new(Instance {
            library: self.clone(),
            instance,
        }))
    }
}

/// A plugin instance (its `Protocol` value).
pub struct Instance {
    library: Arc<Library>,
    instance: *mut c_void,
}

// SAFETY: the instance is a `Protocol`, which the SDK requires to be `Send + Sync`.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: made by `create`; every session holds an Arc to us, so none is left.
        unsafe { (self.library.table().destroy)(self.instance) };
    }
}

impl Instance {
    /// The library.
    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    /// Opens a session.
    pub fn open(self: &Arc<Self>, info: &SessionInfo) -> Result<PluginSession, SessionFault> {
        // postcard encoding of our own types cannot fail.
        let bytes = postcard::to_allocvec(info).expect("encoding SessionInfo");
        let mut session: *mut c_void = std::ptr::null_mut();
        let mut out = RBuf::empty();
        let table = self.library.table();
        // SAFETY: instance is live; the slice is live; `session` and `out` are valid.
        let status = unsafe {
            (table.open)(
                self.instance,
                bytes.as_ptr(),
                bytes.len(),
                &mut session,
                &mut out,
            )
        };
        self.library.result(status, out)?;
        if session.is_null() {
            return Err(SessionFault::Plugin("open returned no session".into()));
        }
        Ok(PluginSession {
            instance: self.clone(),
            session,
            poisoned: false,
        })
    }
}

/// One session of a plugin. Used by one connection actor (one thread) at a time.
pub struct PluginSession {
    instance: Arc<Instance>,
    session: *mut c_void,
    poisoned: bool,
}

// SAFETY: sessions are `Send` (SDK requirement); `&mut self` on `drive` keeps use to one
// thread at a time.
unsafe impl Send for PluginSession {}

impl PluginSession {
    /// Feeds one input and returns the outputs, up to and including `Output::Timeout`.
    pub fn drive(&mut self, now: Now, input: &Input) -> Result<Vec<Output>, SessionFault> {
        if self.poisoned {
            return Err(SessionFault::Poisoned);
        }
        let bytes = hub_plugin_sdk::abi::encode(&(now, input)).expect("encoding an Input");
        let table = self.instance.library.table();
        let mut out = RBuf::empty();
        // SAFETY: the session is live and used by this thread only; the slice is live.
        let status = unsafe { (table.drive)(self.session, bytes.as_ptr(), bytes.len(), &mut out) };
        match self.instance.library.result(status, out) {
            Ok(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| SessionFault::Plugin(format!("undecodable outputs: {e}"))),
            Err(fault) => {
                if matches!(fault, SessionFault::Panic(_)) {
                    self.poisoned = true;
                }
                Err(fault)
            }
        }
    }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        // SAFETY: made by `open`, dropped once here.
        unsafe { (self.instance.library.table().close)(self.session) };
    }
}
