//! The export side of the ABI: generic `extern "C"` glue that `export_plugin!` points the
//! vtable at. This module and the hub's loader are the only places with `unsafe`.
//!
//! Every entry runs the plugin's code under `catch_unwind`, so a panic becomes
//! [`STATUS_PANIC`] instead of unwinding into the hub (which would abort the process).

#![allow(unsafe_code)]

use crate::abi::{PluginVTable, RBuf, STATUS_ERROR, STATUS_OK, STATUS_PANIC};
use crate::io::{Input, Now, Output, SessionInfo};
use crate::plugin::{drive as drive_session, Protocol};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Builds the vtable for protocol `P`, claiming ABI version `abi_version`.
pub const fn vtable<P: Protocol>(abi_version: u32) -> PluginVTable {
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

/// Exports a [`Protocol`] as this library's plugin entry point.
///
/// Put it once at the root of a `cdylib` crate:
///
/// ```ignore
/// hub_plugin_sdk::export_plugin!(MyProtocol);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($protocol:ty) => {
        $crate::__export_plugin_with_abi!($protocol, $crate::abi::ABI_VERSION);
    };
}

/// Like [`export_plugin!`] but claiming an arbitrary ABI version: only for testing the
/// hub's refusal of mismatched plugins.
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
